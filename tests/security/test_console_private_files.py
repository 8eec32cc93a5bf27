"""var/ is private: a session key read from the SQLite database logs in, so nobody else may read it.

``make run``'s first steps run in real processes with a permissive umask (022) and a fresh
VAR_DIR; afterwards every folder under it is 0700 and every file 0600.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

from django.conf import settings

PERMISSIVE = 0o022


def manage(var_dir: Path, *args: str) -> subprocess.CompletedProcess:
    # SQLite and the filesystem broker, as `make run` without settings.
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL"}}
    env |= {"VAR_DIR": str(var_dir), "DJANGO_SETTINGS_MODULE": "console.settings"}
    env.pop("SECRET_KEY", None)
    env.pop("CERT_ENCRYPTION_KEYS", None)
    return subprocess.run(
        [sys.executable, str(settings.BASE_DIR / "manage.py"), *args],
        env=env,
        cwd=settings.BASE_DIR,
        umask=PERMISSIVE,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )


def modes(var_dir: Path) -> dict[str, int]:
    found = {".": stat.S_IMODE(var_dir.stat().st_mode)}
    for path in var_dir.rglob("*"):
        found[str(path.relative_to(var_dir))] = stat.S_IMODE(path.lstat().st_mode)
    return found


def test_make_run_leaves_every_file_under_var_private(tmp_path: Path) -> None:
    var_dir = tmp_path / "var"
    # What the Makefile's shell makes before the console runs, under the operator's umask.
    token = var_dir / "dataplane" / "token"
    old = os.umask(PERMISSIVE)
    try:
        token.parent.mkdir(parents=True)
        token.write_text("a-node-token\n")
    finally:
        os.umask(old)
    assert stat.S_IMODE(token.stat().st_mode) == 0o644

    manage(var_dir, "migrate", "--noinput")
    bootstrap = manage(
        var_dir, "bootstrap", "--node-token-file", str(token), "--node-url", "http://127.0.0.1:9"
    )

    assert "Created user 'admin'" in bootstrap.stdout
    found = modes(var_dir)
    # The database, both secrets and a queued push message are among them.
    assert {"console.sqlite3", "secret_key", "cert_encryption_key", "dataplane/token"} <= set(found)
    assert any(name.startswith("celery-broker/out/") for name in found), sorted(found)
    folders = {name for name in found if (var_dir / name).is_dir()}
    assert {name: found[name] for name in folders} == dict.fromkeys(folders, 0o700)
    files = set(found) - folders
    assert {name: found[name] for name in files} == dict.fromkeys(files, 0o600)


def test_an_older_install_is_made_private_by_bootstrap(tmp_path: Path) -> None:
    var_dir = tmp_path / "var"
    manage(var_dir, "migrate", "--noinput")
    # As an older version left them.
    os.chmod(var_dir, 0o755)
    os.chmod(var_dir / "console.sqlite3", 0o644)

    manage(var_dir, "bootstrap")

    assert stat.S_IMODE(var_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((var_dir / "console.sqlite3").stat().st_mode) == 0o600
