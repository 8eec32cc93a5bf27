"""Everything under VAR_DIR is private to the user the console runs as.

It holds the SQLite database (password hashes and session keys: a session key read from it logs
in), the secret key, the key that encrypts certificates' private keys, the broker's queued push
messages and the dataplane token. Folders are 0700 and files 0600 whatever umask the console was
started with.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

PRIVATE_UMASK = 0o077
FOLDER_MODE = 0o700
FILE_MODE = 0o600


def keep_private(var_dir: Path) -> None:
    """Run first by the settings, so that every console process (manage.py, gunicorn, the Celery
    worker and beat) creates its files 0600 and its folders 0700, SQLite's journal included."""
    os.umask(PRIVATE_UMASK)
    var_dir.mkdir(mode=FOLDER_MODE, parents=True, exist_ok=True)
    os.chmod(var_dir, FOLDER_MODE)


def tighten(var_dir: Path) -> list[Path]:
    """Make every folder under ``var_dir`` 0700 and every file 0600; returns what changed.

    For what was made before the console set its umask: by an older version, by the Makefile's
    shell (the dataplane token), or a database copied in.
    """
    changed = []
    for root, folders, files in os.walk(var_dir):
        for name, wanted in [("", FOLDER_MODE)] + [(f, FILE_MODE) for f in files]:
            path = Path(root, name) if name else Path(root)
            mode = os.lstat(path).st_mode
            if stat.S_ISLNK(mode) or stat.S_IMODE(mode) == wanted:
                continue
            os.chmod(path, wanted)
            changed.append(path)
        folders[:] = [f for f in folders if not Path(root, f).is_symlink()]
    return changed
