"""Listeners, server groups, health checks, TLS security policies and access control lists."""
