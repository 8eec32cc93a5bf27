"""Run a command as the terminal's foreground job, so that Ctrl-C reaches it and not make.

    python deploy/foreground.py COMMAND [ARG...]

`make run` ends in a long-running supervisord. A terminal sends Ctrl-C's SIGINT to its whole
foreground process group, make included, and GNU make answers it by waiting for its child and then
ending itself with that same signal: the shell reports 130 however cleanly everything stopped.
Here the command runs in a process group of its own that is made the terminal's foreground group,
so Ctrl-C reaches the command alone; it drains, exits 0, and make exits 0 after it. The terminal
is handed back to make's group when the command ends. Without a terminal (CI, a service manager)
this simply becomes the command.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys


def foreground_terminal() -> int | None:
    """The controlling terminal, when this process's group is its foreground job."""
    try:
        terminal = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY)
    except OSError:
        return None
    if os.tcgetpgrp(terminal) != os.getpgrp():  # started in the background: leave it so
        os.close(terminal)
        return None
    return terminal


def run_in_foreground(command: list[str], terminal: int) -> int:
    ours = os.tcgetpgrp(terminal)
    child = subprocess.Popen(command, process_group=0)
    # Changing the foreground group from what becomes a background group raises SIGTTOU.
    signal.signal(signal.SIGTTOU, signal.SIG_IGN)
    # A signal meant for the job (sent to make's group, or to this process) goes on to it.
    for number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(number, lambda received, _frame: child.send_signal(received))
    try:
        os.tcsetpgrp(terminal, child.pid)
    except OSError:
        pass  # the command already ended, or the terminal went away: nothing to hand over
    try:
        status = child.wait()
    finally:
        try:
            os.tcsetpgrp(terminal, ours)
        except OSError:
            pass
    return status if status >= 0 else 128 - status


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python deploy/foreground.py COMMAND [ARG...]", file=sys.stderr)
        return 2
    terminal = foreground_terminal()
    if terminal is None:
        os.execvp(argv[0], argv)
    return run_in_foreground(argv, terminal)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
