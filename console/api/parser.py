"""A strict JSON reading of request bodies.

Python's json module accepts what RFC 8259 leaves open or forbids, and each of those can make the
API act on something other than what a reviewer of the request would read:
- a repeated key keeps its last value, so `{"port": 80, "port": 22}` passes a proxy or log that
  reads the first and applies the second;
- `NaN` and `Infinity` are not JSON, and compare unequal to themselves;
- `"\\ud800"` decodes to a lone surrogate that PostgreSQL, the audit log and every UTF-8 writer
  refuse later, far from the field that carried it.
Each is refused here with the place it was found, as a 400 problem document.
"""

from __future__ import annotations

import json
from typing import Any

from django.http import HttpRequest
from ninja.parser import Parser


class BodyRefused(ValueError):
    """The body is JSON that this API does not accept; the message says where and why."""


def _no_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        _check_text(key)
        if key in seen:
            raise BodyRefused(f"The field {key!r} appears more than once in one object.")
        seen[key] = value
    return seen


def _no_constants(name: str) -> Any:
    raise BodyRefused(f"{name} is not a JSON number.")


def _check_text(text: str) -> None:
    if not text.isascii():
        try:
            text.encode()
        except UnicodeEncodeError:
            raise BodyRefused(
                "A string holds a lone surrogate (an unpaired \\ud800-\\udfff)."
            ) from None


def _check_strings(value: Any) -> None:
    # Keys are checked as the objects are built; values are checked here, once, iteratively so a
    # deep document cannot exhaust the stack a second time.
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            _check_text(item)
        elif isinstance(item, dict):
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)


def loads_strict(body: bytes | str) -> Any:
    """json.loads, refusing repeated keys, NaN/Infinity and lone surrogates (BodyRefused)."""
    value = json.loads(body, object_pairs_hook=_no_repeats, parse_constant=_no_constants)
    _check_strings(value)
    return value


class StrictParser(Parser):
    def parse_body(self, request: HttpRequest) -> Any:
        return loads_strict(request.body)
