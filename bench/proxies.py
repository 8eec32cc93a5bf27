"""The three proxies under test behind one interface: start, reconfigure, add listeners, stop."""

from __future__ import annotations

import http.client
import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import configs
from bench.processes import (
    ProcessError,
    Supervisor,
    cpu_seconds,
    process_count,
    wait_for_port,
    wait_for_status,
)
from bench.tools import Tools

log = logging.getLogger("bench")

START_TIMEOUT = 30.0
APPLY_TIMEOUT = 120.0
# HAProxy and nginx stop old workers within 5 s (hard-stop-after, worker_shutdown_timeout).
SETTLE_TIMEOUT = 10.0


@dataclass(frozen=True)
class Shared:
    """What every proxy of a run shares: tools, backend, certificate and work directory."""

    tools: Tools
    supervisor: Supervisor
    directory: Path
    backend_port: int
    certificate: configs.ServerCertificate
    certificate_files: dict[str, Path]


@dataclass(frozen=True)
class ApplyTiming:
    """How long a configuration change took: to be accepted, and until every new port served."""

    accepted: float
    serving: float


def write_atomically(path: Path, text: str) -> None:
    """Replace a configuration file in one step: a reload may be reading the previous one."""
    temporary = path.with_suffix(path.suffix + ".tmp")
    temporary.write_text(text)
    temporary.replace(path)


def dataplane_worker_option() -> bool:
    """Whether `python -m dataplane --help` offers --workers (SO_REUSEPORT worker processes)."""
    done = subprocess.run(
        [sys.executable, "-m", "dataplane", "--help"],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
    )
    return "--workers" in done.stdout


class Proxy:
    """One proxy under test; subclasses know how to configure and reload it."""

    name = ""

    def __init__(self, shared: Shared, ports: configs.ProxyPorts) -> None:
        self.shared = shared
        self.ports = ports
        self.workers = 1
        self.process: subprocess.Popen[bytes] | None = None
        self.revision = 0

    def skip_reason(self, workers: int) -> str | None:
        """Why this proxy cannot run with `workers` workers, None when it can."""
        return None

    def start(self, workers: int) -> None:
        self.workers = workers
        self.revision = 0
        self._write_config(())
        self.process = self._launch()
        deadline = time.monotonic() + START_TIMEOUT
        if not wait_for_status(self.ports.http, deadline=deadline, pause=0.05):
            raise ProcessError(
                f"{self.name} did not serve on port {self.ports.http}:\n"
                + self.shared.supervisor.log_tail(self.name)
            )
        self._after_start()

    def stop(self) -> None:
        if self.process is not None:
            self.shared.supervisor.stop(self.process)
            self.process = None

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.process.pid) if self.process is not None else 0.0

    def process_count(self) -> int:
        return process_count(self.process.pid) if self.process is not None else 0

    def settle(self, count: int, timeout: float = SETTLE_TIMEOUT) -> None:
        """Wait until old workers left by reloads have exited (at most `timeout` seconds)."""
        deadline = time.monotonic() + timeout
        while self.process_count() > count and time.monotonic() < deadline:
            time.sleep(0.1)

    def reconfigure(self) -> float:
        """Push one new configuration; seconds until the proxy took it (or was signalled)."""
        self.revision += 1
        started = time.monotonic()
        self._apply(())
        return time.monotonic() - started

    def apply_listeners(self, extra_ports: Sequence[int]) -> ApplyTiming:
        """Add HTTP listeners on extra_ports; timed until every one of them answers 200."""
        self.revision += 1
        started = time.monotonic()
        self._apply(extra_ports)
        accepted = time.monotonic() - started
        deadline = started + APPLY_TIMEOUT
        for port in extra_ports:
            if not wait_for_status(port, deadline=deadline, pause=0.001):
                raise ProcessError(f"{self.name}: port {port} did not answer 200 in time")
        return ApplyTiming(accepted, time.monotonic() - started)

    def restore(self) -> None:
        """Back to the three base listeners, and wait until the extra ones are gone."""
        processes = self.process_count()
        self.revision += 1
        self._apply(())
        self.settle(processes)

    # Subclass hooks.
    def _write_config(self, extra_ports: Sequence[int]) -> None:
        raise NotImplementedError

    def _launch(self) -> subprocess.Popen[bytes]:
        raise NotImplementedError

    def _after_start(self) -> None:
        """Wait for the listeners that are not checked by start()."""
        deadline = time.monotonic() + START_TIMEOUT
        for port in (self.ports.https, self.ports.tcp_ssl):
            if not wait_for_port(port, deadline=deadline):
                raise ProcessError(f"{self.name} does not listen on port {port}")

    def _apply(self, extra_ports: Sequence[int]) -> None:
        """Write the configuration with extra_ports and make the running proxy load it."""
        self._write_config(extra_ports)
        assert self.process is not None
        os.kill(self.process.pid, self._reload_signal)

    _reload_signal = signal.SIGHUP


class Haproxy(Proxy):
    name = "haproxy"
    # Master-worker mode (-W): SIGUSR2 makes the master load the file again and start new workers.
    _reload_signal = signal.SIGUSR2

    @property
    def _path(self) -> Path:
        return self.shared.directory / "haproxy.cfg"

    def _write_config(self, extra_ports: Sequence[int]) -> None:
        write_atomically(
            self._path,
            configs.haproxy_cfg(
                workers=self.workers,
                ports=self.ports,
                backend_port=self.shared.backend_port,
                pem=self.shared.certificate_files["haproxy"],
                extra_ports=extra_ports,
                revision=self.revision,
            ),
        )

    def _launch(self) -> subprocess.Popen[bytes]:
        check = subprocess.run(
            [self.shared.tools.haproxy, "-c", "-q", "-f", str(self._path)],
            check=False,
            capture_output=True,
            text=True,
            timeout=30,
        )
        if check.returncode != 0:
            raise ProcessError(f"haproxy refuses its configuration: {check.stderr.strip()}")
        return self.shared.supervisor.start(
            self.name, [self.shared.tools.haproxy, "-W", "-db", "-f", str(self._path)]
        )


class Nginx(Proxy):
    name = "nginx"

    @property
    def _path(self) -> Path:
        return self.shared.directory / "nginx-proxy.conf"

    def _write_config(self, extra_ports: Sequence[int]) -> None:
        write_atomically(
            self._path,
            configs.proxy_nginx_conf(
                workers=self.workers,
                ports=self.ports,
                backend_port=self.shared.backend_port,
                certificate=self.shared.certificate_files["certificate"],
                key=self.shared.certificate_files["key"],
                directory=self.shared.directory,
                stream_module=self.shared.tools.nginx_stream_module,
                extra_ports=extra_ports,
                revision=self.revision,
            ),
        )

    def _launch(self) -> subprocess.Popen[bytes]:
        return start_nginx(self.shared, self.name, self._path)


def start_nginx(shared: Shared, name: str, config: Path) -> subprocess.Popen[bytes]:
    """nginx in the foreground with its own prefix, so nothing touches /etc or /var/log."""
    prefix = shared.directory / f"{name}-prefix"
    prefix.mkdir(exist_ok=True)
    check = subprocess.run(
        [shared.tools.nginx, "-t", "-q", "-p", str(prefix), "-e", "stderr", "-c", str(config)],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
    )
    if check.returncode != 0:
        raise ProcessError(f"nginx refuses {config.name}: {check.stderr.strip()}")
    return shared.supervisor.start(
        name, [shared.tools.nginx, "-p", str(prefix), "-e", "stderr", "-c", str(config)]
    )


class Dataplane(Proxy):
    name = "dataplane"

    def __init__(self, shared: Shared, ports: configs.ProxyPorts, control_port: int) -> None:
        super().__init__(shared, ports)
        self.control_port = control_port
        self.generation = 0
        self.token = secrets.token_urlsafe(24)
        self.has_workers = dataplane_worker_option()

    def skip_reason(self, workers: int) -> str | None:
        if workers > 1 and not self.has_workers:
            return (
                "the dataplane runs one process per node and offers no --workers option "
                "(no SO_REUSEPORT), so a second node could not share the port"
            )
        return None

    def _write_config(self, extra_ports: Sequence[int]) -> None:
        """The snapshot goes over the control API; nothing to write before the start."""

    def _launch(self) -> subprocess.Popen[bytes]:
        state = self.shared.directory / "dataplane-state"
        state.mkdir(exist_ok=True)
        for stale in state.iterdir():
            stale.unlink()
        token_file = self.shared.directory / "dataplane-token"
        token_file.touch(mode=0o600)
        token_file.write_text(self.token)
        command = [
            sys.executable,
            "-m",
            "dataplane",
            "--control",
            f"127.0.0.1:{self.control_port}",
            "--token-file",
            str(token_file),
            "--state-dir",
            str(state),
            "--drain-timeout",
            "1",
            "--log-level",
            "WARNING",
        ]
        if self.has_workers:
            command += ["--workers", str(self.workers)]
        process = self.shared.supervisor.start(self.name, command)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise ProcessError(
                    "the dataplane exited:\n" + self.shared.supervisor.log_tail(self.name)
                )
            if self._healthy():
                break
            time.sleep(0.05)
        else:
            raise ProcessError("the dataplane's control API did not answer")
        self.process = process
        self.generation = 0
        self._apply(())
        return process

    def _healthy(self) -> bool:
        try:
            status, _ = self._request("GET", "/v1/healthz", None, timeout=1.0)
        except OSError:
            return False
        return status == 200

    def _request(
        self, method: str, path: str, body: bytes | None, timeout: float = APPLY_TIMEOUT
    ) -> tuple[int, Any]:
        connection = http.client.HTTPConnection("127.0.0.1", self.control_port, timeout=timeout)
        try:
            headers = {"Authorization": f"Bearer {self.token}"}
            if body is not None:
                headers["Content-Type"] = "application/json"
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            payload = response.read()
        finally:
            connection.close()
        try:
            return response.status, json.loads(payload)
        except ValueError:
            return response.status, payload.decode(errors="replace")

    def _apply(self, extra_ports: Sequence[int]) -> None:
        self.generation += 1
        snapshot = configs.dataplane_snapshot(
            generation=self.generation,
            ports=self.ports,
            backend_port=self.shared.backend_port,
            certificate=self.shared.certificate,
            extra_ports=extra_ports,
            revision=self.revision,
        )
        status, answer = self._request("PUT", "/v1/config", json.dumps(snapshot).encode())
        if status != 200:
            raise ProcessError(f"the dataplane refused generation {self.generation}: {answer}")
        failed = {
            listener_id: result.get("reason", "")
            for listener_id, result in answer.get("listeners", {}).items()
            if result.get("status") != "running"
        }
        if failed:
            raise ProcessError(f"dataplane listeners did not start: {failed}")
