"""The embedded broker: kombu's filesystem transport, with every message written atomically.

kombu's own channel creates a message file under its final name and then writes it, while a
consumer takes any file with that name: polled often, it takes the file empty or half written,
fails to decode it, and the worker stops on the error. Here the message is written under a name
no consumer takes and renamed into place, which a consumer sees whole or not at all.
"""

from __future__ import annotations

import os
import time
import uuid

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.json import dumps


class Channel(filesystem.Channel):
    def _put(self, queue: str, payload: dict, **kwargs: object) -> None:
        # Named as kombu names them: a millisecond clock first, so a sorted listing is the queue.
        name = f"{round(time.monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        # A consumer takes only "<name>.<queue>.msg"; the leading dot and the suffix keep it off
        # this one until it is complete.
        partial = os.path.join(self.data_folder_out, f".{name}.partial")
        try:
            with open(partial, "wb") as handle:
                handle.write(dumps(payload).encode())
            os.replace(partial, final)
        except OSError as error:
            raise ChannelError(f"Cannot add file {final!r} to directory") from error


class Transport(filesystem.Transport):
    Channel = Channel
