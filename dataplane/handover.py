"""Worker processes that outlive their supervisor, and the node that takes over from them.

A node with `--workers N` keeps its listening sockets in its worker processes, not in itself. When
the supervisor dies (kill -9, a crash), its workers notice the end of the pipe they were started
with and keep serving the snapshot they have: orphaned, but every listener keeps answering. The
next node started on the same state directory finds them through the pid files its predecessor
left there, starts its own workers with the saved snapshot, and only once those have applied it
(every listener bound beside the orphans' sockets, SO_REUSEPORT) tells the orphans to drain:
SIGTERM, they stop accepting, finish requests in flight within --drain-timeout, and exit 0.

An orphan that no successor ever retires keeps serving: a node's control process gone for good
is a fault for the operator to see (the console reports the node unreachable), not a reason to
refuse traffic that the last snapshot still describes.

A pid file names one worker: `workers/<pid>` holding the process's start time (field 22 of
/proc/<pid>/stat). A pid the system gave to another process since is never signalled: its start
time differs, or its command line is not a dataplane worker's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("dataplane.handover")

WORKERS_DIR = "workers"
WORKER_MODULE = b"dataplane.workers"
# How often a retiring orphan is looked at while it drains.
POLL = 0.05


def _start_time(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name in parentheses may hold spaces: count fields after its closing one.
    fields = stat.rpartition(") ")[2].split()
    if not fields or fields[0] == "Z":
        return None
    return fields[19]


def _is_worker(pid: int) -> bool:
    try:
        return WORKER_MODULE in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False


@dataclass(frozen=True)
class WorkerRecord:
    """One worker process as its pid file names it."""

    pid: int
    started: str
    path: Path

    def alive(self) -> bool:
        """Still this very process (not a reused pid), and not yet exited."""
        return _start_time(self.pid) == self.started and _is_worker(self.pid)


class WorkerRegistry:
    """The pid files of a node's workers in its state directory."""

    def __init__(self, state_dir: Path) -> None:
        self.directory = Path(state_dir) / WORKERS_DIR

    def add(self, pid: int) -> None:
        started = _start_time(pid)
        if started is None:
            return
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        (self.directory / str(pid)).write_text(started + "\n")

    def remove(self, pid: int) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.directory / str(pid)).unlink()

    def survivors(self) -> list[WorkerRecord]:
        """Workers of an earlier node that are still running; stale pid files are removed."""
        found = []
        with contextlib.suppress(FileNotFoundError):
            for path in self.directory.iterdir():
                if not path.name.isdigit():
                    continue
                record = WorkerRecord(int(path.name), path.read_text().strip(), path)
                if record.alive():
                    found.append(record)
                else:
                    path.unlink(missing_ok=True)
        return found


def ask_to_drain(orphans: list[WorkerRecord]) -> None:
    """SIGTERM each orphan: it stops accepting, finishes what it serves, and exits 0."""
    for orphan in orphans:
        if orphan.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(orphan.pid, signal.SIGTERM)


async def retire(orphans: list[WorkerRecord], drain_timeout: float) -> None:
    """Ask each orphan to drain and wait for it; SIGKILL one that overstays."""
    ask_to_drain(orphans)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + drain_timeout + 5
    waiting = list(orphans)
    while waiting and loop.time() < deadline:
        await asyncio.sleep(POLL)
        waiting = [orphan for orphan in waiting if orphan.alive()]
    for orphan in waiting:
        log.warning("worker %d of the previous node did not drain in time: killed", orphan.pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(orphan.pid, signal.SIGKILL)
    for orphan in orphans:
        orphan.path.unlink(missing_ok=True)
    if orphans:
        log.info("the previous node's %d worker(s) drained and exited", len(orphans))
