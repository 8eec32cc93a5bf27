"""Benchmark harness: the dataplane against HAProxy and nginx on this machine.

`python -m bench [--quick]` starts a backend nginx, the three proxies with equivalent
configurations, drives them with wrk, h2load, openssl s_time and curl, and writes
bench/results/latest.md and latest.json. See bench/README.md.
"""
