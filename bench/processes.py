"""Start, watch and stop the processes of a run; CPU accounting; free ports; a tiny HTTP probe."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

log = logging.getLogger("bench")

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
STOP_TIMEOUT = 10.0
# Listening ports are taken below Linux's ephemeral range (32768-60999), so the load generators'
# outgoing connections never collide with them.
PORT_RANGE = range(20000, 32000)


class ProcessError(RuntimeError):
    """A process did not start or did not become ready in time."""


def parse_stat(text: str) -> tuple[int, float]:
    """(parent pid, CPU seconds including reaped children) from a /proc/PID/stat line."""
    # The command name is in parentheses and may itself hold spaces or parentheses.
    fields = text[text.rindex(")") + 2 :].split()
    parent = int(fields[1])
    utime, stime, cutime, cstime = (int(value) for value in fields[11:15])
    return parent, (utime + stime + cutime + cstime) / CLOCK_TICKS


def _all_stats() -> dict[int, tuple[int, float]]:
    stats = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stats[int(entry.name)] = parse_stat(Path(entry.path, "stat").read_text())
        except (OSError, ValueError):
            continue  # the process ended while we read
    return stats


def tree(stats: dict[int, tuple[int, float]], root: int) -> list[int]:
    """The pids of a process and all its descendants, from a pid -> (ppid, cpu) map."""
    children: dict[int, list[int]] = {}
    for pid, (parent, _) in stats.items():
        children.setdefault(parent, []).append(pid)
    found, pending = [], [root]
    while pending:
        pid = pending.pop()
        if pid in found or pid not in stats:
            continue
        found.append(pid)
        pending.extend(children.get(pid, ()))
    return found


def tree_cpu_seconds(stats: dict[int, tuple[int, float]], root: int) -> float:
    """CPU seconds of a process tree: each one's own time plus that of its reaped children."""
    return sum(stats[pid][1] for pid in tree(stats, root))


def cpu_seconds(root: int) -> float:
    """CPU seconds used so far by a process tree (live processes plus reaped children)."""
    return tree_cpu_seconds(_all_stats(), root)


def process_count(root: int) -> int:
    """How many processes the tree has now (old workers linger after a reload)."""
    return len(tree(_all_stats(), root))


class Supervisor:
    """Every process the run starts; `stop_all` ends them, each by its own process group."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.processes: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, command: Sequence[str], *, env: dict[str, str] | None = None):
        """Start a process in a session of its own, output to LOG_DIR/NAME.log."""
        out = (self.log_dir / f"{name}.log").open("ab")
        try:
            process = subprocess.Popen(
                list(command),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env=env,
            )
        finally:
            out.close()
        self.processes.append((name, process))
        return process

    def stop(self, process: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM the process's group, then SIGKILL it if it outlives the timeout."""
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout)
        # Workers left behind by the group leader (nginx, haproxy) go too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        self.processes = [(n, p) for n, p in self.processes if p is not process]

    def stop_all(self) -> None:
        for _, process in reversed(list(self.processes)):
            try:
                self.stop(process)
            except (OSError, subprocess.TimeoutExpired) as exc:
                log.warning("could not stop process %d: %s", process.pid, exc)

    def log_tail(self, name: str, lines: int = 20) -> str:
        path = self.log_dir / f"{name}.log"
        try:
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def port_is_free(port: int) -> bool:
    """Whether a listener could bind the port now (TIME_WAIT connections do not count)."""
    with socket.socket() as sock:
        # Every proxy sets SO_REUSEADDR, so connections in TIME_WAIT do not keep it busy.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class PortAllocator:
    """Hands out distinct ports from PORT_RANGE that nothing listens on right now."""

    def __init__(self, ports: Iterable[int] = PORT_RANGE, start_offset: int = 0) -> None:
        candidates = list(ports)
        self._candidates = iter(candidates[start_offset:] + candidates[:start_offset])

    def take(self, count: int = 1) -> list[int]:
        found: list[int] = []
        for port in self._candidates:
            if port_is_free(port):
                found.append(port)
                if len(found) == count:
                    return found
        raise ProcessError(f"only {len(found)} of {count} free ports left in the port range")

    def one(self) -> int:
        return self.take(1)[0]


def http_status(port: int, path: str = "/0", timeout: float = 1.0) -> int | None:
    """Status code of GET path on 127.0.0.1:port over a new connection, None when it fails."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(
                f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()
            )
            head = b""
            while b"\r\n" not in head and len(head) < 4096:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                head += chunk
    except OSError:
        return None
    parts = head.split(b" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        return None
    return int(parts[1])


def wait_for_status(port: int, *, deadline: float, path: str = "/0", pause: float = 0.002) -> bool:
    """Poll until GET answers 200 or the monotonic deadline passes."""
    while time.monotonic() < deadline:
        if http_status(port, path) == 200:
            return True
        time.sleep(pause)
    return False


def wait_for_port(port: int, *, deadline: float, pause: float = 0.02) -> bool:
    """Poll until something accepts TCP connections on 127.0.0.1:port."""
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return True
        time.sleep(pause)
    return False
