"""The native part of the dataplane.

- dataplane/nghttp2.pyx: the HTTP/2 engine's binding to nghttp2 (always built; the Makefile
  installs Debian's libnghttp2-dev, its header and shared library, before pip runs this).
- dataplane/tlsrecords.pyx: a finished TLS session's records moved by OpenSSL from C (always
  built; links the libssl that Python's own ssl module uses, whose headers the Makefile installs).
- dataplane/heads.pyx: the scan of a backend's response head for the lines the proxy handles
  (always built: both forms of the proxy use it).
- The hot path: the plain `.py` modules in COMPILED are also compiled by Cython into extension
  modules beside them, as python-zeroconf and dbus-fast do. The `.py` files stay the only source;
  Python imports the extension when it is there and not older than its source
  (dataplane/compiled.py), the source otherwise. FERRY_PURE_PYTHON=1 skips compiling them here,
  and at run time makes the dataplane import the sources even where extensions exist.

Everything else about the package is declared in pyproject.toml.
"""

import os

from Cython.Build import cythonize
from setuptools import Extension, setup

# What one HTTP request or TCP connection runs through, found with `python -m bench
# --instructions` (callgrind's per-function counts). Package __init__ modules stay Python.
COMPILED = (
    "dataplane/balancing.py",
    "dataplane/deadlines.py",
    "dataplane/protocols/exchange.py",
    "dataplane/protocols/gate.py",
    "dataplane/protocols/handle.py",
    "dataplane/protocols/h2.py",
    "dataplane/protocols/http.py",
    "dataplane/protocols/settings.py",
    "dataplane/protocols/streams.py",
    "dataplane/protocols/tls_layer.py",
    "dataplane/stats.py",
    "dataplane/upstream.py",
)

HOT_PATH_DIRECTIVES = {
    "language_level": "3",
    # Type hints stay documentation: the modules must behave exactly as they do uncompiled,
    # where an `int` hint accepts a bool and an `X | None` hint is not enforced.
    "annotation_typing": False,
}


def _pure_python() -> bool:
    return os.environ.get("FERRY_PURE_PYTHON", "") not in ("", "0")


extensions = cythonize(
    [
        Extension("dataplane.nghttp2", ["dataplane/nghttp2.pyx"], libraries=["nghttp2"]),
        Extension("dataplane.heads", ["dataplane/heads.pyx"]),
        Extension(
            "dataplane.tlsrecords", ["dataplane/tlsrecords.pyx"], libraries=["ssl", "crypto"]
        ),
    ],
    compiler_directives={"language_level": "3"},
)
if not _pure_python():
    extensions += cythonize(
        [Extension(path[:-3].replace("/", "."), [path]) for path in COMPILED],
        compiler_directives=HOT_PATH_DIRECTIVES,
    )

setup(ext_modules=extensions)
