"""`manage.py check --deploy` is clean with the documented production settings."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_check_deploy_reports_nothing_above_info(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "DEBUG": "0",
        "SECRET_KEY": "x7#kq2!v9@mz$w4^p8&n3*r6(t1)y5-u0+e_a.b~c|d{f}g[h]i;j:l<o>s?q",
        "ALLOWED_HOSTS": "lb.example.com",
        "CONSOLE_HTTPS": "1",
        "VAR_DIR": str(tmp_path),
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
    }
    env.pop("REDIS_URL", None)
    env.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout
