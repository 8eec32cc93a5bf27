"""`manage.py createuser` run the way an operator runs it, without a terminal."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_without_a_terminal_it_says_to_pass_password_env(tmp_path: Path) -> None:
    # Given no terminal to prompt on (stdin is not a TTY, as in a script or CI job)
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path / 'console.sqlite3'}"}
    env["VAR_DIR"] = str(tmp_path)
    # Start-up INFO logs of installed apps are not what this test reads.
    env["LOG_LEVEL"] = "WARNING"
    # When the operator creates a user without --password-env
    finished = subprocess.run(
        [sys.executable, "manage.py", "createuser", "vera", "--role", "viewer"],
        check=False,
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    # Then the command fails with one line naming the option, not a traceback
    assert finished.returncode == 1
    assert "Traceback" not in finished.stderr
    assert "EOFError" not in finished.stderr
    errors = [line for line in finished.stderr.splitlines() if "Error" in line]
    assert len(errors) == 1
    assert errors[0].startswith("CommandError: No terminal to prompt for a password")
    assert "--password-env" in errors[0]
