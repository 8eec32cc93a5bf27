"""gunicorn settings of the console: ``gunicorn --config python:console.gunicorn_config``.

The command line keeps the bind address, workers and timeouts; this holds what needs code.
"""

from __future__ import annotations

# supervisord or systemd manage the process; gunicorn's own control socket would only be one
# more path per user that two consoles on a machine fight over.
control_socket_disable = True


def post_worker_init(worker: object) -> None:
    """Open the broker connection in each worker as it starts, not in its first Submit."""
    from console.celery import open_broker_connection

    open_broker_connection()
