"""The scenarios of a run, in order, for every proxy, repeated and interleaved.

The three proxies run side by side during a pass, and each repetition measures them in turn, so
a disturbance on the machine (the load generators share its cores) spreads over all three rather
than falling on one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from bench import configs, loadgen
from bench.loadgen import Load, LoadError
from bench.processes import PortAllocator, ProcessError, port_is_free, wait_for_status
from bench.proxies import Dataplane, Haproxy, Nginx, Proxy, Shared, start_nginx
from bench.report import Results
from bench.tools import Tools

log = logging.getLogger("bench")

CONNECTIONS = 64
# HTTP/2 multiplexes: fewer connections, several requests in flight on each (160 in all).
H2_CONNECTIONS = 16
H2_STREAMS = 10
FALLBACK_RATE = 5000.0
PORT_RELEASE_TIMEOUT = 20.0


@dataclass(frozen=True)
class Plan:
    """How much of each scenario a run does."""

    mode: str
    repetitions: int
    seconds: float  # one wrk or h2load throughput run
    sizes: tuple[str, ...]
    h2_sizes: tuple[str, ...]
    handshake_seconds: float
    s_time_clients: int
    bulk: bool
    latency_seconds: float
    reconfig_seconds: float
    generations: int
    listener_counts: tuple[int, ...]
    worker_passes: tuple[int, ...]


FULL = Plan(
    mode="full",
    repetitions=3,
    seconds=4,
    sizes=("0", "1k", "64k"),
    h2_sizes=("0", "1k"),
    handshake_seconds=3,
    s_time_clients=2,
    bulk=True,
    latency_seconds=6,
    reconfig_seconds=8,
    generations=100,
    listener_counts=(100, 1000),
    worker_passes=(1, 2),
)
QUICK = Plan(
    mode="quick",
    repetitions=1,
    seconds=2,
    sizes=("0", "64k"),
    h2_sizes=("0",),
    handshake_seconds=2,
    s_time_clients=2,
    bulk=True,
    latency_seconds=3,
    reconfig_seconds=3,
    generations=25,
    listener_counts=(100,),
    worker_passes=(1,),
)
# The 2-worker pass repeats only what more cores change: throughput and handshakes.
SECOND_PASS_METRICS = (
    "http_keepalive",
    "http_new_connection",
    "https_keepalive",
    "tls_handshake",
    "https_h2",
)


def h2_metric(size: str) -> str:
    """The HTTP/2 scenario's row for a body size, named like scenario 1's (`https_h2_0b`)."""
    return f"https_h2_{size}b" if size == "0" else f"https_h2_{size}"


# What one measurement returns: metric -> value, and the load (requests, failures) behind it.
Action = Callable[[Proxy], tuple[dict[str, float], Load]]


class Bench:
    """One run: the backend, the three proxies, and every scenario of the plan."""

    def __init__(self, plan: Plan, tools: Tools, shared: Shared, ports: PortAllocator) -> None:
        self.plan = plan
        self.tools = tools
        self.shared = shared
        self.ports = ports
        self.results = Results(mode=plan.mode)
        self.proxies: list[Proxy] = [
            Dataplane(shared, configs.ProxyPorts(*ports.take(3)), control_port=ports.one()),
            Haproxy(shared, configs.ProxyPorts(*ports.take(3))),
            Nginx(shared, configs.ProxyPorts(*ports.take(3))),
        ]
        self.haproxy_max: float | None = None

    # Scaffolding.

    @classmethod
    def prepare(cls, plan: Plan, tools: Tools, supervisor, directory: Path) -> Bench:
        """Certificate, bodies and the backend nginx; the proxies start per pass."""
        ports = PortAllocator(start_offset=int(time.time()) % 4000)
        certificate = configs.make_certificate()
        files = configs.write_certificate_files(certificate, directory)
        docroot = directory / "docroot"
        configs.write_bodies(docroot)
        backend_port = ports.one()
        backend_conf = directory / "backend.conf"
        backend_conf.write_text(
            configs.backend_nginx_conf(port=backend_port, docroot=docroot, directory=directory)
        )
        shared = Shared(tools, supervisor, directory, backend_port, certificate, files)
        start_nginx(shared, "backend", backend_conf)
        if not wait_for_status(backend_port, deadline=time.monotonic() + 30, pause=0.05):
            raise ProcessError(f"the backend did not start:\n{supervisor.log_tail('backend')}")
        return cls(plan, tools, shared, ports)

    def run(self) -> Results:
        for workers in self.plan.worker_passes:
            self._pass(workers)
        return self.results

    def _pass(self, workers: int) -> None:
        active = []
        for proxy in self.proxies:
            reason = proxy.skip_reason(workers)
            if reason is None:
                active.append(proxy)
            else:
                self.results.notes.append(
                    f"{workers}-worker pass: {proxy.name} skipped because {reason}."
                )
        try:
            for proxy in list(active):
                try:
                    proxy.start(workers)
                except (ProcessError, OSError) as exc:
                    # The others still run; the report says why this one is missing.
                    log.warning("%s did not start: %s", proxy.name, exc)
                    self.results.notes.append(
                        f"{workers}-worker pass: {proxy.name} did not start: {exc}"
                    )
                    proxy.stop()
                    active.remove(proxy)
            log.info("pass with %d worker(s): %s", workers, ", ".join(p.name for p in active))
            for proxy in active:
                # A short warm-up: lazy imports, first connections, caches.
                loadgen.wrk(self.tools.wrk, self._url(proxy, "0"), seconds=1)
            self._throughput(workers, active)
            self._http2(workers, active)
            if workers == 1:
                self._bulk(active)
                self._latency(active)
                self._reconfiguration(active)
                self._control(active)
        finally:
            for proxy in active:
                proxy.stop()
        skipped = [p.name for p in self.proxies if p not in active]
        for metric, pass_workers in list(self.results.rows):
            if pass_workers == workers:
                for name in skipped:
                    self.results.skip(metric, workers, name)

    # Measuring.

    def _measure(
        self,
        workers: int,
        proxies: Iterable[Proxy],
        metric: str,
        action: Action,
        *,
        per_cpu: str | None = None,
        repetitions: int | None = None,
    ) -> None:
        """Run `action` for each proxy in turn, `repetitions` times, recording every value.

        `metric` is the row a failed measurement is reported on.
        """
        proxies = list(proxies)
        for _ in range(repetitions or self.plan.repetitions):
            for proxy in proxies:
                cpu_before = proxy.cpu_seconds()
                try:
                    values, load = action(proxy)
                except (LoadError, ProcessError, OSError) as exc:
                    log.warning("%s %s: %s", metric, proxy.name, exc)
                    self.results.sample(metric, workers, proxy.name).note = str(exc)
                    continue
                cpu = proxy.cpu_seconds() - cpu_before
                for measured, value in values.items():
                    sample = self.results.sample(measured, workers, proxy.name)
                    sample.runs.append(value)
                    sample.failed += load.failed
                    sample.detail["cpu_seconds"] = sample.detail.get("cpu_seconds", 0.0) + cpu
                    for name, extra in load.detail.items():
                        sample.detail[name] = sample.detail.get(name, 0.0) + extra
                if per_cpu is not None and cpu > 0:
                    self.results.sample(per_cpu, workers, proxy.name).runs.append(
                        load.requests / cpu
                    )
                log.info(
                    "%-9s %s", proxy.name, ", ".join(f"{k}={v:,.2f}" for k, v in values.items())
                )

    @staticmethod
    def _url(proxy: Proxy, body: str, *, tls: bool = False) -> str:
        if tls:
            return f"https://127.0.0.1:{proxy.ports.https}/{body}"
        return f"http://127.0.0.1:{proxy.ports.http}/{body}"

    def _wrk(self, url: str, headers: tuple[str, ...] = ()) -> Load:
        return loadgen.wrk(
            self.tools.wrk, url, seconds=self.plan.seconds, connections=CONNECTIONS, headers=headers
        )

    # 1-4: throughput and handshakes.

    def _throughput(self, workers: int, proxies: list[Proxy]) -> None:
        for size in self.plan.sizes:
            metric = f"http_keepalive_{size}b" if size == "0" else f"http_keepalive_{size}"

            def keepalive(proxy: Proxy, size: str = size, metric: str = metric):
                load = self._wrk(self._url(proxy, size))
                values = {metric: load.per_second}
                if size == "64k":
                    values["http_keepalive_64k_mbps"] = load.bytes_per_second / 1e6
                return values, load

            per_cpu = "http_keepalive_0b_per_cpu" if size == "0" else None
            self._measure(workers, proxies, metric, keepalive, per_cpu=per_cpu)
            if workers == 1 and size == "0":
                haproxy = self.results.rows.get((metric, 1), {}).get("haproxy")
                self.haproxy_max = haproxy.median if haproxy else None

        def new_connection(proxy: Proxy):
            load = self._wrk(self._url(proxy, "0"), headers=("Connection: close",))
            return {"http_new_connection": load.per_second}, load

        self._measure(
            workers,
            proxies,
            "http_new_connection",
            new_connection,
            per_cpu="http_new_connection_per_cpu",
        )

        def https_keepalive(proxy: Proxy):
            load = self._wrk(self._url(proxy, "0", tls=True))
            return {"https_keepalive": load.per_second}, load

        self._measure(
            workers,
            proxies,
            "https_keepalive",
            https_keepalive,
            per_cpu="https_keepalive_per_cpu",
        )

        for reuse, metric in ((False, "tls_handshake_full"), (True, "tls_handshake_resumed")):

            def handshakes(proxy: Proxy, reuse: bool = reuse, metric: str = metric):
                load = loadgen.s_time(
                    self.tools.openssl,
                    proxy.ports.https,
                    seconds=self.plan.handshake_seconds,
                    reuse=reuse,
                    parallel=self.plan.s_time_clients,
                )
                if reuse and load.detail.get("resumed", 0) < load.requests * 0.9:
                    raise LoadError(
                        f"only {load.detail.get('resumed', 0):.0f} of {load.requests} "
                        "handshakes were resumed"
                    )
                return {metric: load.per_second}, load

            self._measure(workers, proxies, metric, handshakes)

    # 9: HTTPS with HTTP/2 (the same listener as scenario 3, ALPN h2).

    def _h2load(self, proxy: Proxy, body: str, seconds: float) -> Load:
        return loadgen.h2load_h2(
            self.tools.h2load,
            self._url(proxy, body, tls=True),
            seconds=seconds,
            connections=H2_CONNECTIONS,
            streams=H2_STREAMS,
        )

    def _http2(self, workers: int, proxies: list[Proxy]) -> None:
        for proxy in proxies:
            # The dataplane imports its HTTP/2 code on the first h2 connection; keep that out of
            # the first measurement. A failure here shows again, and is reported, below.
            try:
                self._h2load(proxy, "0", seconds=1)
            except LoadError as exc:
                log.warning("HTTP/2 warm-up %s: %s", proxy.name, exc)
        for size in self.plan.h2_sizes:
            metric = h2_metric(size)

            def h2(proxy: Proxy, size: str = size, metric: str = metric):
                load = self._h2load(proxy, size, seconds=self.plan.seconds)
                return {metric: load.per_second}, load

            per_cpu = "https_h2_0b_per_cpu" if size == "0" else None
            self._measure(workers, proxies, metric, h2, per_cpu=per_cpu)

    # 5-6: bulk TLS throughput and latency at a fixed rate.

    def _bulk(self, proxies: list[Proxy]) -> None:
        if not self.plan.bulk:
            return

        def bulk(proxy: Proxy):
            load = loadgen.curl_download(
                self.tools.curl, f"https://127.0.0.1:{proxy.ports.tcp_ssl}/100m"
            )
            if load.failed or load.detail.get("bytes") != configs.BODIES["100m"]:
                raise LoadError(f"the 100 MiB download through {proxy.name} was incomplete")
            return {"tcp_ssl_bulk": load.bytes_per_second / 1e6}, load

        self._measure(1, proxies, "tcp_ssl_bulk", bulk)

    def _latency(self, proxies: list[Proxy]) -> None:
        rate = self.haproxy_max / 2 if self.haproxy_max else FALLBACK_RATE
        self.results.notes.append(
            f"Latency scenario: {rate:,.0f} requests/s over {CONNECTIONS} connections "
            "(half of HAProxy's 0 B keep-alive maximum), h2load --h1 --rps."
        )
        log_file = self.shared.directory / "h2load-requests.log"

        def latency(proxy: Proxy):
            load = loadgen.h2load_fixed_rate(
                self.tools.h2load,
                self._url(proxy, "0"),
                rate=rate,
                seconds=self.plan.latency_seconds,
                log_file=log_file,
                connections=CONNECTIONS,
            )
            if not load.latencies_us:
                raise LoadError("h2load logged no successful request")
            return {
                "latency_p50": loadgen.percentile(load.latencies_us, 0.50) / 1000,
                "latency_p99": loadgen.percentile(load.latencies_us, 0.99) / 1000,
            }, load

        self._measure(1, proxies, "latency_p99", latency)

    # 7: reconfiguration under load.

    def _reconfiguration(self, proxies: list[Proxy]) -> None:
        plan = self.plan

        def reconfigure(proxy: Proxy):
            seconds = plan.reconfig_seconds
            # Changes start after 10% of the run and end by 90%, evenly spaced.
            spacing = seconds * 0.8 / plan.generations
            processes = proxy.process_count()
            wrk = loadgen.wrk_start(
                self.tools.wrk, self._url(proxy, "0"), seconds=seconds, connections=CONNECTIONS
            )
            apply_times = []
            try:
                start = time.monotonic() + seconds * 0.1
                for index in range(plan.generations):
                    pause = start + index * spacing - time.monotonic()
                    if pause > 0:
                        time.sleep(pause)
                    apply_times.append(proxy.reconfigure())
                load = loadgen.wrk_finish(wrk, seconds)
            finally:
                if wrk.poll() is None:
                    wrk.kill()
                    wrk.communicate()
            load.detail["generations"] = len(apply_times)
            load.detail["apply_seconds_max"] = max(apply_times)
            # Old HAProxy and nginx workers finish before the next measurement starts.
            proxy.settle(processes)
            return {"reconfig_throughput": load.per_second, "reconfig_failed": load.failed}, load

        self._measure(1, proxies, "reconfig_failed", reconfigure)
        self.results.notes.append(
            f"Reconfiguration: {plan.generations} changes during {plan.reconfig_seconds:g}s of "
            "HTTP keep-alive load: a new generation PUT to the dataplane (the HTTP listener "
            "renamed), a configuration reload for HAProxy (SIGUSR2, master-worker) and nginx "
            "(SIGHUP). Failed = wrk socket errors plus non-2xx/3xx responses."
        )

    # 8: control plane.

    def _control(self, proxies: list[Proxy]) -> None:
        def new_listener(proxy: Proxy):
            port = self.ports.one()
            timing = proxy.apply_listeners([port])
            proxy.restore()
            return {"control_new_listener": timing.serving * 1000}, Load(
                requests=1, detail={"accepted_seconds": timing.accepted}
            )

        self._measure(1, proxies, "control_new_listener", new_listener)
        for count in self.plan.listener_counts:
            ports = self.ports.take(count)
            metric = f"control_apply_{count}"

            def many(proxy: Proxy, ports: list[int] = ports, metric: str = metric):
                self._wait_released(ports)
                timing = proxy.apply_listeners(ports)
                proxy.restore()
                return {metric: timing.serving}, Load(
                    requests=1, detail={"accepted_seconds": timing.accepted}
                )

            self._measure(1, proxies, metric, many)
        self.results.notes.append(
            "Control plane: from the PUT (dataplane) or the reload signal (HAProxy, nginx) until "
            "every new HTTP listener answered a GET with 200, probed one after the other. The "
            "dataplane's own ACK time is in latest.json (detail.accepted_seconds)."
        )

    @staticmethod
    def _wait_released(ports: list[int]) -> None:
        """Old HAProxy/nginx workers may hold the ports for a moment after a reload."""
        deadline = time.monotonic() + PORT_RELEASE_TIMEOUT
        pending = list(ports)
        while pending and time.monotonic() < deadline:
            pending = [port for port in pending if not port_is_free(port)]
            if pending:
                time.sleep(0.1)
        if pending:
            raise ProcessError(f"{len(pending)} listener ports are still in use")
