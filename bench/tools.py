"""Locate the public tools the benchmark drives, and install Debian's packages when missing."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("bench")

# Debian package that provides each command (nginx's stream module is a separate package).
PACKAGES = {
    "wrk": "wrk",
    "h2load": "nghttp2-client",
    "openssl": "openssl",
    "curl": "curl",
    "haproxy": "haproxy",
    "nginx": "nginx",
}
STREAM_MODULE_PACKAGE = "libnginx-mod-stream"
STREAM_MODULE_DIRS = (Path("/usr/lib/nginx/modules"), Path("/usr/share/nginx/modules"))
SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin", "/sbin"])
APT_TIMEOUT = 600


class ToolError(RuntimeError):
    """A tool is missing and cannot be installed."""


@dataclass(frozen=True)
class Tools:
    wrk: str
    h2load: str
    openssl: str
    curl: str
    haproxy: str
    nginx: str
    # None when nginx was built with the stream module compiled in.
    nginx_stream_module: str | None

    def versions(self) -> dict[str, str]:
        """First line of each tool's version output, for the report."""
        commands = {
            "wrk": [self.wrk, "-v"],
            "h2load": [self.h2load, "--version"],
            "openssl": [self.openssl, "version"],
            "curl": [self.curl, "--version"],
            "haproxy": [self.haproxy, "-v"],
            "nginx": [self.nginx, "-v"],
        }
        found = {}
        for name, command in commands.items():
            try:
                done = subprocess.run(
                    command, check=False, capture_output=True, text=True, timeout=10
                )
            except (OSError, subprocess.TimeoutExpired):
                found[name] = "unknown"
                continue
            lines = (done.stdout + done.stderr).strip().splitlines()
            found[name] = lines[0].strip() if lines else "unknown"
        return found


def _which(command: str) -> str | None:
    return shutil.which(command, path=SEARCH_PATH)


def _stream_module() -> str | None:
    for directory in STREAM_MODULE_DIRS:
        candidate = directory / "ngx_stream_module.so"
        if candidate.exists():
            return str(candidate)
    return None


def _nginx_has_stream(nginx: str) -> bool:
    done = subprocess.run([nginx, "-V"], check=False, capture_output=True, text=True, timeout=10)
    flags = done.stderr.split()
    return "--with-stream" in flags


def missing_packages() -> list[str]:
    """Debian packages still needed for the commands and nginx's stream module."""
    needed = [package for command, package in PACKAGES.items() if _which(command) is None]
    nginx = _which("nginx")
    if _stream_module() is None and (nginx is None or not _nginx_has_stream(nginx)):
        needed.append(STREAM_MODULE_PACKAGE)
    return needed


def install(packages: list[str]) -> None:
    """apt-get install the packages (root only); apt-get update runs once first."""
    if os.geteuid() != 0:
        raise ToolError(f"missing {', '.join(packages)}: install them as root (apt-get install)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    log.info("installing %s with apt-get", " ".join(packages))
    for command in (
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages],
    ):
        done = subprocess.run(
            command, check=False, env=env, capture_output=True, text=True, timeout=APT_TIMEOUT
        )
        if done.returncode != 0:
            raise ToolError(f"{' '.join(command)} failed: {done.stderr.strip()[-500:]}")


def ensure_tools() -> Tools:
    """The tools' paths, installing Debian's packages first when some are missing."""
    needed = missing_packages()
    if needed:
        install(needed)
    paths = {command: _which(command) for command in PACKAGES}
    absent = [command for command, path in paths.items() if path is None]
    if absent:
        raise ToolError(f"still missing after installation: {', '.join(absent)}")
    nginx = paths["nginx"]
    assert nginx is not None
    module = None if _nginx_has_stream(nginx) else _stream_module()
    return Tools(
        wrk=paths["wrk"],  # type: ignore[arg-type]
        h2load=paths["h2load"],  # type: ignore[arg-type]
        openssl=paths["openssl"],  # type: ignore[arg-type]
        curl=paths["curl"],  # type: ignore[arg-type]
        haproxy=paths["haproxy"],  # type: ignore[arg-type]
        nginx=nginx,
        nginx_stream_module=module,
    )
