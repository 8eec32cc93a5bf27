"""Seed 001 compression rules, row by row, and round trips through real decompressors."""

import gzip
import os
import zlib

import brotli
import pytest

from dataplane.compression import (
    GZIP_CONTENT_TYPES,
    MIN_COMPRESS_LENGTH,
    Compressor,
    choose_encoding,
    parse_accept_encoding,
)

BIG = MIN_COMPRESS_LENGTH + 1
SEED_GZIP_TYPES = [
    b"text/xml",
    b"text/plain",
    b"text/css",
    b"application/javascript",
    b"application/x-javascript",
    b"application/rss+xml",
    b"application/atom+xml",
    b"application/xml",
    b"application/json",
]


def choose(accept, content_type=b"text/plain", length=BIG, encoding=None, *, enabled=True):
    return choose_encoding(accept, content_type, length, encoding, enabled=enabled)


def test_gzip_list_is_exactly_the_seed_list():
    assert frozenset(SEED_GZIP_TYPES) == GZIP_CONTENT_TYPES


# -- "When disabled, no files are compressed." -----------------------------------------------------


@pytest.mark.parametrize("accept", [b"br", b"gzip", b"gzip, deflate, br"])
def test_disabled_listener_compresses_nothing(accept):
    assert choose(accept, enabled=False) is None


# -- "triggers only when the response Content-Length exceeds 1,024 bytes" --------------------------


@pytest.mark.parametrize("length", [0, 1, 1000, 1024])
@pytest.mark.parametrize("accept", [b"br", b"gzip"])
def test_content_length_up_to_1024_is_not_compressed(accept, length):
    assert choose(accept, length=length) is None


@pytest.mark.parametrize(("accept", "expected"), [(b"br", "br"), (b"gzip", "gzip")])
def test_content_length_1025_is_compressed(accept, expected):
    assert choose(accept, length=1025) == expected


def test_response_without_content_length_is_not_compressed():
    assert choose(b"gzip, br", length=None) is None


# -- never recompress ------------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", [b"gzip", b"br", b"deflate", b"GZIP", b"zstd", b"gzip, br"])
def test_already_encoded_response_is_not_compressed_again(encoding):
    assert choose(b"gzip, deflate, br", encoding=encoding) is None


@pytest.mark.parametrize("encoding", [b"identity", b" Identity ", b""])
def test_identity_content_encoding_counts_as_not_encoded(encoding):
    assert choose(b"br", encoding=encoding) == "br"


# -- "If a client request supports both Brotli and Gzip, ALB uses Brotli" --------------------------


@pytest.mark.parametrize(
    "accept",
    [b"gzip, deflate, br", b"br, gzip", b"gzip;q=1.0, br;q=0.1", b"BR, GZIP", b"gzip,br,zstd"],
)
@pytest.mark.parametrize("content_type", [b"text/plain", b"text/html", b"image/png"])
def test_client_accepting_both_gets_brotli(accept, content_type):
    assert choose(accept, content_type) == "br"


# -- "Brotli compresses all file types." -----------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    [*SEED_GZIP_TYPES, b"text/html", b"image/svg+xml", b"application/octet-stream", None],
)
def test_brotli_compresses_every_type(content_type):
    assert choose(b"br", content_type) == "br"


# -- "Gzip compresses the following types ..." -----------------------------------------------------


@pytest.mark.parametrize("content_type", SEED_GZIP_TYPES)
def test_gzip_only_client_gets_gzip_for_each_listed_type(content_type):
    assert choose(b"gzip", content_type) == "gzip"


@pytest.mark.parametrize(
    "content_type",
    [
        b"text/plain; charset=utf-8",
        b"Application/JSON",
        b"  text/css ;charset=ISO-8859-1",
        b"application/xml;q=1",
    ],
)
def test_gzip_type_ignores_parameters_and_case(content_type):
    assert choose(b"gzip", content_type) == "gzip"


# -- "If a client request supports only Gzip and includes a file type not supported by Gzip, ALB
#    does not compress any files." -----------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    [b"text/html", b"image/png", b"application/octet-stream", b"text/xml-ish", b"text", b"", None],
)
def test_gzip_only_client_gets_nothing_for_an_unlisted_type(content_type):
    assert choose(b"gzip, deflate", content_type) is None


# -- Accept-Encoding parsing -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (b"", (False, False)),
        (b"identity", (False, False)),
        (b"deflate", (False, False)),
        (b"br", (True, False)),
        (b"gzip", (False, True)),
        (b"x-gzip", (False, True)),
        (b"gzip, deflate, br", (True, True)),
        (b"br;q=0, gzip", (False, True)),
        (b"br; q=0.0, gzip;q=0.5", (False, True)),
        (b"br;q=0.001, gzip;q=0", (True, False)),
        (b"br;q=0, gzip;q=0", (False, False)),
        (b"*", (True, True)),
        (b"*;q=0", (False, False)),
        (b"gzip, *;q=0", (False, True)),
        (b"br;q=0, *", (False, True)),
        (b"*, gzip;q=0", (True, False)),
        (b"br;q=abc, gzip", (False, True)),
        (b"br;level=1;q=0.5", (True, False)),
    ],
)
def test_accept_encoding_parsing(accept, expected):
    assert parse_accept_encoding(accept) == expected
    # The second answer comes from the cache and must be the same.
    assert parse_accept_encoding(accept) == expected


@pytest.mark.parametrize(
    ("accept", "content_type", "expected"),
    [
        (None, b"text/plain", None),
        (b"", b"text/plain", None),
        (b"br;q=0, gzip", b"text/plain", "gzip"),
        (b"br;q=0, gzip", b"text/html", None),
        (b"gzip;q=0, br", b"text/html", "br"),
        (b"*", b"text/html", "br"),
        (b"br;q=0, *", b"text/css", "gzip"),
        (b"deflate", b"text/plain", None),
    ],
)
def test_q_zero_and_wildcard_decide_the_coding(accept, content_type, expected):
    assert choose(accept, content_type) == expected


def test_accept_encoding_cache_stays_bounded():
    for n in range(2000):
        parse_accept_encoding(b"gzip, x-custom-%d" % n)

    assert parse_accept_encoding(b"gzip, x-custom-5") == (False, True)


# -- the streaming compressor ----------------------------------------------------------------------


def body_chunks() -> list[bytes]:
    text = b"".join(b"line %d of a response body that compresses well\n" % n for n in range(3000))
    # Incompressible bytes too, and an empty chunk, which a proxy may pass along.
    return [text[:10], text[10:70_000], b"", os.urandom(5000), text[70_000:]]


def run(compressor: Compressor, chunks: list[bytes]) -> bytes:
    return b"".join(compressor.compress(chunk) for chunk in chunks) + compressor.finish()


def test_gzip_round_trip():
    chunks = body_chunks()

    compressed = run(Compressor("gzip"), chunks)

    assert compressed[:2] == b"\x1f\x8b"  # a gzip member, not a raw zlib stream
    assert gzip.decompress(compressed) == b"".join(chunks)
    assert len(compressed) < len(b"".join(chunks)) / 2


def test_brotli_round_trip():
    chunks = body_chunks()

    compressed = run(Compressor("br"), chunks)

    assert brotli.decompress(compressed) == b"".join(chunks)
    assert len(compressed) < len(b"".join(chunks)) / 2


@pytest.mark.parametrize("encoding", ["gzip", "br"])
def test_empty_body_round_trip(encoding):
    compressed = run(Compressor(encoding), [])

    decompress = gzip.decompress if encoding == "gzip" else brotli.decompress
    assert decompress(compressed) == b""


def test_gzip_flush_makes_everything_so_far_decodable():
    compressor = Compressor("gzip")
    decoder = zlib.decompressobj(31)

    first = compressor.compress(b"first part, ") + compressor.flush()

    assert decoder.decompress(first) == b"first part, "
    rest = compressor.compress(b"second part") + compressor.finish()
    assert decoder.decompress(rest) == b"second part"
    assert decoder.eof


def test_brotli_flush_makes_everything_so_far_decodable():
    compressor = Compressor("br")
    decoder = brotli.Decompressor()

    first = compressor.compress(b"first part, ") + compressor.flush()

    assert decoder.process(first) == b"first part, "
    rest = compressor.compress(b"second part") + compressor.finish()
    assert decoder.process(rest) == b"second part"
    assert decoder.is_finished()


@pytest.mark.parametrize(("encoding", "level"), [("gzip", 1), ("gzip", 9), ("br", 0), ("br", 11)])
def test_explicit_level_round_trip(encoding, level):
    data = b"abc" * 10_000

    compressed = run(Compressor(encoding, level=level), [data])

    decompress = gzip.decompress if encoding == "gzip" else brotli.decompress
    assert decompress(compressed) == data


def test_unknown_coding_is_refused():
    with pytest.raises(ValueError, match="unknown content coding 'deflate'"):
        Compressor("deflate")


# -- seed 000's GZIP-only mode ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("accept", "content_type", "expected"),
    [
        (b"gzip, deflate, br", b"text/plain", "gzip"),
        (b"gzip, deflate, br", b"text/html", None),
        (b"br", b"text/plain", None),
        (b"gzip", b"application/json", "gzip"),
    ],
)
def test_gzip_only_mode_never_chooses_brotli(accept, content_type, expected):
    result = choose_encoding(accept, content_type, BIG, None, enabled=True, allow_brotli=False)

    assert result == expected
