"""Read PEM text block by block.

cryptography's PEM loaders read the first block they recognise and silently ignore the rest, so
a pasted "certificate" can hide a second certificate, a key or DH parameters. This module splits
the text into every BEGIN/END block itself, so validation can look at each one.

It knows nothing about form fields: failures are `PemSyntaxError` with a short reason that the
caller words for its field.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

BOM = "\ufeff"
_BEGIN = re.compile(r"^-----BEGIN ([A-Z0-9 .#_-]+)-----$")
_END = re.compile(r"^-----END ([A-Z0-9 .#_-]+)-----$")
_HEADER = re.compile(r"^([A-Za-z0-9-]+):\s*(.*)$")
_LINE_WIDTH = 64
# Characters that never appear in PEM text; their presence means a binary upload.
_BINARY_CHARACTERS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


class PemSyntaxError(ValueError):
    """The text is not well-formed PEM; `reason` is a phrase such as "it is UTF-16 text"."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class PemBlock:
    label: str  # the word(s) after BEGIN, e.g. "CERTIFICATE", "EC PRIVATE KEY"
    headers: tuple[tuple[str, str], ...]  # RFC 1421 headers, e.g. Proc-Type and DEK-Info
    der: bytes
    line: int  # 1-based line of the BEGIN marker in the submitted text

    @property
    def is_encrypted(self) -> bool:
        """True for PKCS#8 encrypted keys and traditional `Proc-Type: 4,ENCRYPTED` keys."""
        if self.label == "ENCRYPTED PRIVATE KEY":
            return True
        return any(
            name.lower() == "proc-type" and "ENCRYPTED" in value.upper()
            for name, value in self.headers
        )

    def to_pem(self) -> str:
        """Canonical armour: LF line ends, 64-column base64, headers kept, trailing newline."""
        lines = [f"-----BEGIN {self.label}-----"]
        if self.headers:
            lines.extend(f"{name}: {value}" for name, value in self.headers)
            lines.append("")
        encoded = base64.b64encode(self.der).decode("ascii")
        lines.extend(
            encoded[start : start + _LINE_WIDTH] for start in range(0, len(encoded), _LINE_WIDTH)
        )
        lines.append(f"-----END {self.label}-----")
        return "\n".join(lines) + "\n"


def decode_text(data: str | bytes) -> str:
    """Turn an upload into PEM text: UTF-8 or ASCII, BOM removed, LF line ends.

    Raises PemSyntaxError when the data is binary (DER, PKCS#12) or UTF-16/32 text.
    """
    if isinstance(data, bytes):
        data = _decode_bytes(data)
    text = data.removeprefix(BOM)
    if _BINARY_CHARACTERS.search(text):
        raise PemSyntaxError(_describe_binary_text(text))
    return text.replace("\r\n", "\n").replace("\r", "\n")


def split_blocks(text: str) -> list[PemBlock]:
    """Every BEGIN/END block in `text`, in order.

    Blank lines and whitespace around blocks are allowed; any other text outside a block, a
    block without its END line, or damaged base64 raises PemSyntaxError. Finding no block at
    all also raises, so a caller never mistakes junk for an empty list.
    """
    blocks: list[PemBlock] = []
    lines = text.split("\n")
    index = 0
    while index < len(lines):
        line = lines[index].strip()
        if not line:
            index += 1
            continue
        begin = _BEGIN.match(line)
        if begin is None:
            if _END.match(line):
                raise PemSyntaxError(f"line {index + 1} has an END line without its BEGIN line")
            raise PemSyntaxError(
                f"line {index + 1} is outside any BEGIN/END block; keep only the blocks"
            )
        block, index = _read_block(lines, index, begin.group(1))
        blocks.append(block)
    if not blocks:
        raise PemSyntaxError("no -----BEGIN ...----- line was found")
    return blocks


def _read_block(lines: list[str], start: int, label: str) -> tuple[PemBlock, int]:
    """Read one block whose BEGIN line is lines[start]; return it and the next line index."""
    headers: list[tuple[str, str]] = []
    body: list[str] = []
    index = start + 1
    while index < len(lines):
        line = lines[index].strip()
        end = _END.match(line)
        if end is not None:
            if end.group(1) != label:
                raise PemSyntaxError(
                    f"the block starting on line {start + 1} begins with {label} "
                    f"but ends with {end.group(1)}"
                )
            der = _decode_base64(body, start)
            return PemBlock(label, tuple(headers), der, start + 1), index + 1
        if _BEGIN.match(line):
            break
        header = _HEADER.match(line) if not body else None
        if header is not None:
            headers.append((header.group(1), header.group(2).strip()))
        elif line:
            body.append(line)
        index += 1
    raise PemSyntaxError(f"the {label} block starting on line {start + 1} has no END line")


def _decode_base64(body: list[str], start: int) -> bytes:
    try:
        der = base64.b64decode("".join(body), validate=True)
    except (binascii.Error, ValueError):
        raise PemSyntaxError(
            f"the block starting on line {start + 1} is not valid base64"
        ) from None
    if not der:
        raise PemSyntaxError(f"the block starting on line {start + 1} is empty")
    return der


def _decode_bytes(data: bytes) -> str:
    if data.startswith((b"\xff\xfe", b"\xfe\xff")) or _looks_like_utf16(data):
        raise PemSyntaxError("it is UTF-16 text; save it as ASCII or UTF-8")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise PemSyntaxError(describe_binary(data)) from None


def _looks_like_utf16(data: bytes) -> bool:
    """UTF-16 without a BOM: ASCII text with a NUL after (or before) every character."""
    sample = data[:64]
    if len(sample) < 4:
        return False
    odd, even = sample[1::2], sample[0::2]
    return odd.count(0) == len(odd) or even.count(0) == len(even)


def _describe_binary_text(text: str) -> str:
    try:
        return describe_binary(text.encode("latin-1"))
    except UnicodeEncodeError:
        return "it is binary data, not text"


def describe_binary(data: bytes) -> str:
    """Name what a binary upload most likely is, so the operator knows how to convert it."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")) or _looks_like_utf16(data):
        return "it is UTF-16 text; save it as ASCII or UTF-8"
    content = _der_sequence_content(data)
    if content is None:
        return "it is binary data, not text"
    # A PKCS#12 PFX is SEQUENCE { version INTEGER 3, ... }; a DER certificate or key starts its
    # SEQUENCE with another SEQUENCE (certificate) or a small INTEGER other than 3.
    if content.startswith(b"\x02\x01\x03"):
        return "it is a PKCS#12 (.pfx/.p12) bundle"
    return "it is binary DER data"


def _der_sequence_content(data: bytes) -> bytes | None:
    """The bytes after a DER SEQUENCE header, or None if `data` does not start with one."""
    if len(data) < 2 or data[0] != 0x30:
        return None
    length_byte = data[1]
    if length_byte < 0x80:
        return data[2:]
    length_octets = length_byte & 0x7F
    if not 1 <= length_octets <= 4:
        return None
    return data[2 + length_octets :]
