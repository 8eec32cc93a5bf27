"""python -m dataplane: run one dataplane node.

    python -m dataplane --control 127.0.0.1:9901 --token-file PATH --state-dir DIR [--workers N]

On start it restores the last applied snapshot from the state directory. It logs one line
"dataplane ready: control API on HOST:PORT" once the control API accepts requests (with port 0 the
line names the port the system chose). SIGTERM or SIGINT stops accepting connections, lets requests
in flight finish for at most --drain-timeout seconds, and exits 0. With --workers N (N > 1), N
worker processes share the listening ports behind the one control API (see dataplane.workers);
they outlive a node that is killed, and the next node started on the same state directory takes
over from them without refusing a connection (see dataplane.handover).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import signal
import sys
from pathlib import Path

import uvloop

from dataplane.accesslog import DEFAULT_KEEP
from dataplane.compiled import is_compiled
from dataplane.control import MAX_BODY, ControlApi
from dataplane.eventloop import skip_transport_index
from dataplane.handover import WorkerRegistry, ask_to_drain, retire
from dataplane.node import Node
from dataplane.protocols import http
from dataplane.state import SnapshotStore
from dataplane.workers import (
    SupervisorApi,
    WorkerError,
    WorkerGroup,
    access_log_writer,
    worker_command,
)

log = logging.getLogger("dataplane")


def _address(text: str) -> tuple[str, int]:
    host, separator, port = text.rpartition(":")
    if not separator or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    return host.strip("[]") or "127.0.0.1", int(port)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m dataplane", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--control",
        type=_address,
        default=("127.0.0.1", 9901),
        help="HOST:PORT of the control API (default 127.0.0.1:9901)",
    )
    parser.add_argument(
        "--token-file", type=Path, required=True, help="file holding the control API bearer token"
    )
    parser.add_argument(
        "--state-dir", type=Path, required=True, help="directory for the applied snapshot"
    )
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=10.0,
        help="seconds requests in flight may take to finish on SIGTERM (default 10)",
    )
    parser.add_argument(
        "--control-max-body",
        type=_mebibytes,
        default=MAX_BODY,
        help="largest snapshot PUT /v1/config accepts, in MiB (default 64)",
    )
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    parser.add_argument(
        "--workers",
        type=_worker_count,
        default=1,
        help="proxy processes sharing the listening ports (SO_REUSEPORT); default 1",
    )
    parser.add_argument(
        "--access-log",
        choices=("file", "stdout", "both", "off"),
        default="file",
        help="where listeners with the access log on write their lines: access.log in the state "
        "directory (default), stdout, both, or nowhere (the console still shows recent lines)",
    )
    parser.add_argument(
        "--access-log-max-mib",
        type=_mebibytes,
        default=100 * 1024 * 1024,
        dest="access_log_max_bytes",
        help="size at which access.log is rotated, in MiB (default 100)",
    )
    parser.add_argument(
        "--access-log-keep",
        type=_file_count,
        default=DEFAULT_KEEP,
        help=f"rotated access logs kept: access.log.1 ... (default {DEFAULT_KEEP})",
    )
    return parser.parse_args(argv)


def _file_count(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 100:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of files from 0 to 100")
    return int(text)


def _mebibytes(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 4096:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size from 1 to 4096 MiB")
    return int(text) * 1024 * 1024


def _worker_count(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 64:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of workers from 1 to 64")
    return int(text)


async def serve(args: argparse.Namespace, token: str) -> int:
    loop = asyncio.get_running_loop()
    skip_transport_index(loop)
    registry = WorkerRegistry(args.state_dir)
    # Workers a killed node left behind, still serving its last snapshot.
    orphans = registry.survivors()
    if orphans:
        log.info("taking over from %d worker(s) of the previous node", len(orphans))
    node: Node | WorkerGroup
    if args.workers > 1:
        node = WorkerGroup(args.workers, worker_command(args), token, registry)
        try:
            await node.start()
        except WorkerError as exc:
            log.error("%s", exc)
            await node.shutdown(0)
            return 1
    else:
        # One process binds without SO_REUSEPORT: the orphans must let go of the ports first.
        await retire(orphans, args.drain_timeout)
        orphans = []
        node = Node(
            access_log=access_log_writer(
                args.state_dir if args.access_log in ("file", "both") else None,
                stdout=args.access_log in ("stdout", "both"),
                max_bytes=args.access_log_max_bytes,
                keep=args.access_log_keep,
            )
        )
    store = SnapshotStore(args.state_dir)
    snapshot = store.load()
    if snapshot is not None:
        results = await node.apply(snapshot)
        failed = {k: v["reason"] for k, v in results.items() if v["status"] == "failed"}
        log.info(
            "restored generation %d (%d listeners, %d failed)",
            snapshot.generation,
            len(results),
            len(failed),
        )
        for listener_id, reason in failed.items():
            log.warning("listener %s failed after restore: %s", listener_id, reason)
    # The new workers now serve the saved snapshot beside the orphans, which served the same one:
    # the orphans can stop accepting and drain. The control API opens only now, so no change can
    # reach the new workers while the orphans still accept with the old snapshot.
    retiring = None
    if orphans:
        ask_to_drain(orphans)
        retiring = loop.create_task(retire(orphans, args.drain_timeout))
    if isinstance(node, WorkerGroup):
        api: ControlApi = SupervisorApi(
            node, token=token, store=store, max_body=args.control_max_body
        )
    else:
        api = ControlApi(node, token=token, store=store, max_body=args.control_max_body)
    host, port = await api.start(*args.control)

    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    # Long-lived objects created so far need no more cycle collection passes.
    gc.freeze()
    log.info(
        "dataplane ready: control API on %s:%d, hot path %s",
        host,
        port,
        "compiled" if is_compiled(http) else "pure Python",
    )
    await stop.wait()
    log.info("stopping: draining connections for up to %gs", args.drain_timeout)
    api.close()
    await node.shutdown(args.drain_timeout)
    if isinstance(node, Node):
        node.access_logs.close()
    if retiring is not None:
        await retiring
    log.info("stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        token = args.token_file.read_text().strip()
    except OSError as exc:
        log.error("cannot read the token file: %s", exc)
        return 2
    if not token:
        log.error("the token file %s is empty", args.token_file)
        return 2
    return uvloop.run(serve(args, token))


if __name__ == "__main__":
    sys.exit(main())
