"""Worker processes: one control API in front of N proxy processes sharing the listening ports.

    python -m dataplane --workers 2 --control 127.0.0.1:9901 --token-file PATH --state-dir DIR

One Python process serves one core. With `--workers N` (N > 1) the process started by the operator
becomes a supervisor: it serves the control API and keeps the snapshot on disk, and it starts N
worker processes (`python -m dataplane.workers`). Each worker runs its own `Node`, binds every
listener's port with SO_REUSEPORT, so the kernel spreads new connections over the workers, and runs
its own health checks.

The workers hold the listening sockets, so the supervisor can die without costing a connection:
its workers keep serving, orphaned, until the next node on the same state directory takes over
(see dataplane.handover). With `--workers 1` the node process holds the sockets itself.

Every worker is fed the same snapshot. The supervisor relays each accepted `PUT /v1/config` to all
workers at once, over their private control APIs on loopback (same token), and merges their
answers: a listener is `running` when it runs in every worker, otherwise it carries the first
worker's failure. `GET /v1/status` asks every worker and adds their counters up; backend health is
the first worker's view. A worker that dies is started again and given the current snapshot.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import gc
import json
import logging
import os
import secrets
import signal
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from dataplane.accesslog import DEFAULT_KEEP, DEFAULT_MAX_BYTES, AccessLogWriter
from dataplane.config import Snapshot
from dataplane.control import MAX_BODY, ControlApi
from dataplane.eventloop import skip_transport_index
from dataplane.handover import WorkerRegistry
from dataplane.node import GenerationConflict, Node, StaleGeneration
from dataplane.stats import add_histograms
from dataplane.tls import set_ticket_secret

log = logging.getLogger("dataplane.workers")

WORKER_READY = "dataplane worker ready on port "
# How long a worker may take to start, and to answer one control request.
START_TIMEOUT = 30.0
REQUEST_TIMEOUT = 60.0
# A worker that keeps dying is started again at most this often.
RESTART_DELAY = 1.0
# On SIGTERM, how long a worker waits after it stops accepting before it closes idle connections.
FIRST_REQUEST_GRACE = 0.5

_NOT_EVERYWHERE = "not yet applied in every worker process"
_COUNTERS = (
    "active_connections",
    "total_connections",
    "denied_connections",
    "requests",
    "bytes_in",
    "bytes_out",
    "tls_handshakes",
    "throttled_requests",
    "retries",
    "retries_refused",
)
_HISTOGRAMS = ("request_duration", "backend_response_time")
# A listener's "bandwidth" entry: what adds up over the workers (the limit is split among them).
_BANDWIDTH = ("limit_bytes_per_second", "pauses", "paused_seconds")
_EJECTION = (
    "ejected",
    "ejection_reason",
    "ejection_code",
    "ejected_until",
    "ejection_seconds_left",
)


class WorkerError(Exception):
    """A worker that could not be started or did not answer."""


class Worker:
    """One worker process and its private control API."""

    def __init__(
        self, index: int, command: list[str], token: str, ticket_secret: bytes = b""
    ) -> None:
        self.index = index
        self.command = command
        self._authorization = f"Bearer {token}".encode()
        self._ticket_secret = ticket_secret
        self.process: asyncio.subprocess.Process | None = None
        self.port = 0

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            *self.command, stdout=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.PIPE
        )
        # The session ticket secret goes through a pipe: never on disk or in the environment.
        # The pipe then stays open for the supervisor's lifetime: the worker takes its end as the
        # sign that the supervisor is gone.
        stdin = self.process.stdin
        if stdin is not None:
            stdin.write(self._ticket_secret.hex().encode() + b"\n")
            with contextlib.suppress(ConnectionError):
                await stdin.drain()
        try:
            line = await asyncio.wait_for(self.process.stdout.readline(), START_TIMEOUT)  # type: ignore[union-attr]
        except TimeoutError:
            self.process.kill()
            raise WorkerError(f"worker {self.index} did not start") from None
        text = line.decode(errors="replace").strip()
        if not text.startswith(WORKER_READY):
            raise WorkerError(f"worker {self.index} did not start: {text or 'no output'}")
        self.port = int(text[len(WORKER_READY) :])

    async def request(
        self, method: str, path: str, body: bytes = b""
    ) -> tuple[int, dict[str, Any]]:
        """One control request; raises WorkerError when the worker cannot be reached."""
        try:
            return await asyncio.wait_for(self._request(method, path, body), REQUEST_TIMEOUT)
        except (OSError, TimeoutError, ValueError, asyncio.IncompleteReadError) as exc:
            raise WorkerError(f"worker {self.index}: {exc or type(exc).__name__}") from None

    async def _request(self, method: str, path: str, body: bytes) -> tuple[int, dict[str, Any]]:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            writer.write(
                b"%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: %s\r\n"
                b"Content-Length: %d\r\nConnection: close\r\n\r\n"
                % (method.encode(), path.encode(), self._authorization, len(body))
            )
            writer.write(body)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            payload = json.loads(await reader.readexactly(length)) if length else {}
        finally:
            writer.close()
        return status, payload

    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    def release(self) -> None:
        """Close the supervisor's end of an exited worker's pipe."""
        if self.process is not None and self.process.stdin is not None:
            self.process.stdin.close()

    def terminate(self) -> None:
        if self.running():
            self.process.send_signal(signal.SIGTERM)  # type: ignore[union-attr]


class WorkerGroup:
    """Stands where a `Node` stands for the control API: applies snapshots in every worker."""

    def __init__(
        self,
        count: int,
        command: list[str],
        token: str,
        registry: WorkerRegistry | None = None,
    ) -> None:
        if count < 1:
            raise ValueError("at least one worker is needed")
        # One secret for the node's lifetime, kept by restarted workers too, so that session
        # tickets resume in whichever worker the kernel hands a connection to.
        secret = secrets.token_bytes(32)
        self.workers = [Worker(index, command, token, secret) for index in range(count)]
        self.snapshot: Snapshot | None = None
        self.generation = 0
        self.draining = False
        self.started = time.time()
        self._lock = asyncio.Lock()
        self._watcher: asyncio.Task[None] | None = None
        # Pid files in the state directory, so that the next node finds workers this one left.
        self._registry = registry

    async def start(self) -> None:
        await asyncio.gather(*(self._start(worker) for worker in self.workers))
        self._watcher = asyncio.get_running_loop().create_task(self._watch())

    async def _start(self, worker: Worker) -> None:
        await worker.start()
        if self._registry is not None and worker.process is not None:
            self._registry.add(worker.process.pid)

    def _forget(self, worker: Worker) -> None:
        worker.release()
        if self._registry is not None and worker.process is not None:
            self._registry.remove(worker.process.pid)

    # -- applying --------------------------------------------------------------------------------

    async def apply(self, snapshot: Snapshot) -> dict[str, dict[str, str]]:
        """Same contract as `Node.apply`, for every worker at once."""
        async with self._lock:
            if snapshot.generation < self.generation:
                raise StaleGeneration(
                    f"generation {snapshot.generation} is older than the applied "
                    f"generation {self.generation}"
                )
            if (
                self.snapshot is not None
                and snapshot.generation == self.generation
                and snapshot != self.snapshot
            ):
                raise GenerationConflict(
                    f"generation {snapshot.generation} is already applied with other content"
                )
            body = snapshot.to_json().encode()
            answers = await asyncio.gather(*(self._push(worker, body) for worker in self.workers))
            self.snapshot = snapshot
            self.generation = snapshot.generation
            return _merge_results(snapshot, [answer for answer in answers if answer is not None])

    async def _push(self, worker: Worker, body: bytes) -> dict[str, dict[str, str]] | None:
        try:
            status, payload = await worker.request("PUT", "/v1/config", body)
        except WorkerError as exc:
            # The watcher starts it again and gives it the snapshot.
            log.warning("cannot apply in %s", exc)
            return None
        if status != 200:
            log.error("worker %d refused the snapshot: %s", worker.index, payload)
            return None
        return payload.get("listeners", {})

    def results(self) -> dict[str, dict[str, str]]:
        return {}

    # -- status ----------------------------------------------------------------------------------

    def status(self) -> dict[str, object]:
        """What the supervisor knows without asking the workers (no counters)."""
        return {
            "instance_id": self.snapshot.instance_id if self.snapshot else None,
            "generation": self.generation,
            "draining": self.draining,
            "uptime_seconds": round(time.time() - self.started, 3),
            "listeners": {},
        }

    async def gather_status(self) -> dict[str, object]:
        """The node's status: every worker's counters added up, the first worker's health."""
        answers = await asyncio.gather(
            *(worker.request("GET", "/v1/status") for worker in self.workers),
            return_exceptions=True,
        )
        reports = []
        for answer in answers:
            if isinstance(answer, BaseException):
                log.warning("no status from %s", answer)
            elif answer[0] == 200:
                reports.append(answer[1])
        result = self.status()
        if reports:
            listeners = _merge_listeners(reports)
            if len(reports) < len(self.workers):
                # A worker being started again serves nothing yet: its share of the connections
                # waits in its queue or goes to the others, so no listener runs everywhere.
                for entry in listeners.values():
                    if entry["status"] == "running":
                        entry["status"], entry["reason"] = "failed", _NOT_EVERYWHERE
            result["listeners"] = listeners
            result["access_log"] = {
                name: sum(report.get("access_log", {}).get(name, 0) for report in reports)
                for name in ("dropped", "failed")
            }
        return result

    async def gather_access_log(
        self, listener_id: str, filters: dict[str, Any]
    ) -> dict[str, object] | None:
        """A listener's recent access-log entries from every worker, newest first."""
        path = f"/v1/listeners/{quote(listener_id, safe='')}/access-log?{urlencode(filters)}"
        answers = await asyncio.gather(
            *(worker.request("GET", path) for worker in self.workers), return_exceptions=True
        )
        found = [a[1] for a in answers if not isinstance(a, BaseException) and a[0] == 200]
        if not found:
            return None
        lines = [line for answer in found for line in answer.get("lines", [])]
        # RFC 3339 times of one format sort as text.
        lines.sort(key=lambda line: line.get("time") or "", reverse=True)
        return {
            "listener_id": listener_id,
            "enabled": any(answer.get("enabled") for answer in found),
            "lines": lines[: filters.get("limit", 100)],
        }

    # -- lifecycle -------------------------------------------------------------------------------

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(RESTART_DELAY)
            for worker in self.workers:
                if worker.running() or self.draining:
                    continue
                log.warning(
                    "worker %d exited with %s; starting it again",
                    worker.index,
                    worker.process.returncode if worker.process else None,
                )
                self._forget(worker)
                try:
                    await self._start(worker)
                except WorkerError as exc:
                    log.error("%s", exc)
                    continue
                async with self._lock:
                    if self.snapshot is not None:
                        await self._push(worker, self.snapshot.to_json().encode())

    async def shutdown(self, drain_timeout: float) -> None:
        """SIGTERM every worker (each drains on its own) and wait for them."""
        self.draining = True
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        for worker in self.workers:
            worker.terminate()
        for worker in self.workers:
            if worker.process is None:
                continue
            try:
                await asyncio.wait_for(worker.process.wait(), drain_timeout + 5)
            except TimeoutError:
                worker.process.kill()
                await worker.process.wait()
            self._forget(worker)


def _merge_results(
    snapshot: Snapshot, answers: list[dict[str, dict[str, str]]]
) -> dict[str, dict[str, str]]:
    """One result per listener: running only where every worker runs it."""
    merged: dict[str, dict[str, str]] = {}
    for answer in answers:
        for listener_id, result in answer.items():
            known = merged.get(listener_id)
            if known is None or (known["status"] == "running" and result["status"] != "running"):
                merged[listener_id] = result
    if not answers:
        for listener in snapshot.listeners:
            merged[listener.id] = {"status": "failed", "reason": "no worker process answered"}
    return merged


def _merge_listeners(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """Per listener: counters and backend activity added up, health from the first worker."""
    by_worker = [report.get("listeners", {}) for report in reports]
    merged: dict[str, Any] = {}
    for listener_id in dict.fromkeys(key for listeners in by_worker for key in listeners):
        entries = [listeners.get(listener_id) for listeners in by_worker]
        present = [entry for entry in entries if entry is not None]
        mine = copy.deepcopy(present[0])
        counters = mine["counters"]
        for other in present[1:]:
            if mine["status"] == "running" and other["status"] != "running":
                mine["status"], mine["reason"] = other["status"], other["reason"]
            for name in _COUNTERS:
                if name in counters or name in other["counters"]:
                    counters[name] = counters.get(name, 0) + other["counters"].get(name, 0)
            for name in _HISTOGRAMS:
                if name in counters and name in other["counters"]:
                    add_histograms(counters[name], other["counters"][name])
            for rule_id, count in other["counters"].get("throttled_by_rule", {}).items():
                by_rule = counters.setdefault("throttled_by_rule", {})
                by_rule[rule_id] = by_rule.get(rule_id, 0) + count
            for reason, count in other["counters"].get("tls_handshake_failures", {}).items():
                failures = counters.setdefault("tls_handshake_failures", {})
                failures[reason] = failures.get(reason, 0) + count
            for status_class, count in other["counters"]["responses"].items():
                counters["responses"][status_class] = (
                    counters["responses"].get(status_class, 0) + count
                )
            udp = other.get("udp")
            if udp is not None and "udp" in mine:
                for name, value in udp.items():
                    mine["udp"][name] = mine["udp"].get(name, 0) + value
            bandwidth = other.get("bandwidth")
            if bandwidth is not None:
                # Each worker enforces its share of the limit: the shares add up to the limit.
                ours = mine.setdefault("bandwidth", {**bandwidth, **dict.fromkeys(_BANDWIDTH, 0)})
                for name in _BANDWIDTH:
                    # Rounded: thirds of a limit add up to the limit, not to a float just under it.
                    ours[name] = round(ours.get(name, 0) + bandwidth.get(name, 0), 6)
            by_id = {backend["id"]: backend for backend in other["backends"]}
            for backend in mine["backends"]:
                theirs = by_id.get(backend["id"], {})
                for name in ("active", "requests", "connect_failures", "ejections"):
                    if name in backend:
                        backend[name] += theirs.get(name, 0)
                if theirs.get("ejected") and not backend.get("ejected"):
                    # Each worker judges its own traffic: a server one of them ejected is
                    # shown ejected, with that worker's reason and time of return.
                    for name in _EJECTION:
                        backend[name] = theirs.get(name)
                    backend["healthy"] = False
        if len(present) < len(entries):
            # A worker started again that has not got the snapshot yet.
            mine["status"], mine["reason"] = "failed", _NOT_EVERYWHERE
        for name in _HISTOGRAMS:
            if name in counters:
                mine[name] = counters[name]
        merged[listener_id] = mine
    return merged


class SupervisorApi(ControlApi):
    """The control API of a supervisor: status is gathered from the workers when asked."""

    def __init__(self, group: WorkerGroup, **kwargs: Any) -> None:
        super().__init__(group, **kwargs)  # type: ignore[arg-type]
        self.group = group

    async def status(self) -> dict[str, object]:
        # Serves /v1/status and /metrics alike, so both show the workers' counters added up.
        return await self.group.gather_status()

    async def access_log(
        self, listener_id: str, filters: dict[str, Any]
    ) -> dict[str, object] | None:
        return await self.group.gather_access_log(listener_id, filters)


def worker_command(args: argparse.Namespace) -> list[str]:
    """How the supervisor starts one worker."""
    return [
        sys.executable,
        "-m",
        "dataplane.workers",
        "--token-file",
        str(args.token_file),
        "--drain-timeout",
        str(args.drain_timeout),
        "--control-max-body",
        str(args.control_max_body),
        "--log-level",
        args.log_level,
        "--workers",
        str(args.workers),
        *access_log_arguments(args),
    ]


def access_log_arguments(args: argparse.Namespace) -> list[str]:
    """The access-log options a worker gets: the supervisor's, with the file under its state
    directory (every worker appends to the same file, dataplane.accesslog.RotatingFile)."""
    where = getattr(args, "access_log", "file")
    arguments = [
        "--access-log-max-bytes",
        str(getattr(args, "access_log_max_bytes", DEFAULT_MAX_BYTES)),
        "--access-log-keep",
        str(getattr(args, "access_log_keep", DEFAULT_KEEP)),
    ]
    if where in ("file", "both") and getattr(args, "state_dir", None) is not None:
        arguments += ["--access-log-dir", str(args.state_dir)]
    if where in ("stdout", "both"):
        arguments.append("--access-log-stdout")
    return arguments


def access_log_writer(
    directory: Path | None, *, stdout: bool, max_bytes: int, keep: int, worker: bool = False
) -> AccessLogWriter | None:
    """The node's access-log writer, or None when lines go nowhere but the rings."""
    if directory is None and not stdout:
        return None
    stdout_fd = 1
    if stdout and worker:
        # A worker's own stdout is the pipe its supervisor read the ready line from and reads no
        # more; its lines go to the supervisor's stdout instead.
        stdout_fd = os.open(f"/proc/{os.getppid()}/fd/1", os.O_WRONLY | os.O_APPEND)
    return AccessLogWriter(
        directory=directory, stdout=stdout, stdout_fd=stdout_fd, max_bytes=max_bytes, keep=keep
    )


# -- the worker process ----------------------------------------------------------------------------


class _SupervisorPipe(asyncio.Protocol):
    """The worker's stdin: its end means the supervisor is gone. The worker keeps serving."""

    def __init__(self, node: Node) -> None:
        self.node = node

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.node.draining:
            log.warning(
                "the supervisor is gone: serving generation %d on my own until a new node "
                "takes over",
                self.node.generation,
            )


async def serve_worker(
    token: str,
    drain_timeout: float,
    workers: int = 1,
    max_body: int = MAX_BODY,
    access_log: AccessLogWriter | None = None,
) -> int:
    loop = asyncio.get_running_loop()
    skip_transport_index(loop)
    # The kernel spreads connections over the workers and each worker has its own buckets, so each
    # enforces its part of every bandwidth limit.
    node = Node(reuse_port=True, bandwidth_share=1.0 / workers, access_log=access_log)
    # The supervisor passes each snapshot on as it came: the workers take as much as it does.
    api = ControlApi(node, token=token, store=None, max_body=max_body)
    _, port = await api.start("127.0.0.1", 0)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await loop.connect_read_pipe(lambda: _SupervisorPipe(node), sys.stdin)
    gc.freeze()
    sys.stdout.write(f"{WORKER_READY}{port}\n")
    sys.stdout.flush()
    await stop.wait()
    api.close()
    # Stop accepting first and give the connections accepted last a moment to send their first
    # request: the drain closes a connection that has none yet as idle, and a client that just
    # connected would see it closed without an answer. With the listening socket closed, the
    # kernel sends new connections to the other sockets on the port (a successor's workers).
    node.draining = True
    for runtime in node.listeners.values():
        runtime.close_socket()
    await asyncio.sleep(min(FIRST_REQUEST_GRACE, drain_timeout))
    await node.shutdown(drain_timeout)
    node.access_logs.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    import uvloop

    parser = argparse.ArgumentParser(prog="python -m dataplane.workers")
    parser.add_argument("--token-file", type=Path, required=True)
    parser.add_argument("--drain-timeout", type=float, default=10.0)
    parser.add_argument("--control-max-body", type=int, default=MAX_BODY, help="in bytes")
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--workers", type=int, default=1, help="how many workers there are")
    parser.add_argument("--access-log-dir", type=Path, default=None)
    parser.add_argument("--access-log-stdout", action="store_true")
    parser.add_argument("--access-log-max-bytes", type=int, default=DEFAULT_MAX_BYTES)
    parser.add_argument("--access-log-keep", type=int, default=DEFAULT_KEEP)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s[worker]: %(message)s",
        stream=sys.stderr,
    )
    token = args.token_file.read_text().strip()
    secret = bytes.fromhex(sys.stdin.readline().strip() or "")
    set_ticket_secret(secret or None)
    writer = access_log_writer(
        args.access_log_dir,
        stdout=args.access_log_stdout,
        max_bytes=args.access_log_max_bytes,
        keep=args.access_log_keep,
        worker=True,
    )
    return uvloop.run(
        serve_worker(token, args.drain_timeout, max(args.workers, 1), args.control_max_body, writer)
    )


if __name__ == "__main__":
    sys.exit(main())
