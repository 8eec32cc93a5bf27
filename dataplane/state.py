"""The last applied snapshot on disk, so a restarted node serves again before the console calls.

Written atomically: a temporary file in the same directory is written and fsynced, renamed over the
old one, and the directory is fsynced so the rename itself survives a power cut. The file holds
private keys, so it and its directory are readable by the dataplane's user only.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from dataplane.config import ConfigError, Snapshot

log = logging.getLogger(__name__)

SNAPSHOT_FILE = "snapshot.json"


class SnapshotStore:
    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self.directory = Path(state_dir)
        self.path = self.directory / SNAPSHOT_FILE

    def load(self) -> Snapshot | None:
        """The saved snapshot, or None when there is none or it cannot be used."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            return Snapshot.from_json(data)
        except ConfigError as exc:
            # Keep the file for inspection, but start empty: the console will send a new one.
            log.error("ignoring saved snapshot %s: %s", self.path, exc)
            return None

    def save(self, snapshot: Snapshot) -> None:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        data = snapshot.to_json().encode()
        temporary = self.directory / f".{SNAPSHOT_FILE}.{os.getpid()}.tmp"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, self.path)
        directory_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(directory_fd)
        finally:
            os.close(directory_fd)
