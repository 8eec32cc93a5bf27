"""Which form of a hot-path module runs: its Cython extension or its Python source.

setup.py compiles some of the dataplane's `.py` modules into extension modules beside them. Python's
own import system prefers an extension to a source file of the same name, which is right after a
build and wrong in two cases this module handles:
- FERRY_PURE_PYTHON=1 in the environment: every dataplane module runs from its source (CI runs the
  dataplane tests both ways, so the two can never diverge);
- an extension older than its source or its `.pxd`: somebody edited it after the last build.
  Running the stale extension would silently ignore the edit, so the source runs, and the node's
  log says that the build is stale. The extensions declare each other's types (a `.pxd` cimports
  another's classes), so one stale module makes every module of the build run from source: a
  fresh extension cannot take a type from a module that now runs as Python.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import logging
import os
import sys
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType

log = logging.getLogger(__name__)

PURE_PYTHON_VARIABLE = "FERRY_PURE_PYTHON"
PACKAGE_ROOT = os.path.dirname(os.path.abspath(__file__))


def pure_python_requested() -> bool:
    return os.environ.get(PURE_PYTHON_VARIABLE, "") not in ("", "0")


def _extension(directory: str, name: str) -> str | None:
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        candidate = os.path.join(directory, name + suffix)
        if os.path.isfile(candidate):
            return candidate
    return None


def _mtime(path: str) -> float:
    try:
        return os.stat(path).st_mtime
    except FileNotFoundError:
        return 0.0


def stale_extensions(root: str) -> list[str]:
    """Extensions under `root` older than their `.py` source or their `.pxd` declarations."""
    stale = []
    for directory, _, files in os.walk(root):
        for file in files:
            for suffix in importlib.machinery.EXTENSION_SUFFIXES:
                if not file.endswith(suffix):
                    continue
                base = os.path.join(directory, file[: -len(suffix)])
                if not os.path.isfile(base + ".py"):
                    continue  # a binding of its own (nghttp2.pyx), not a compiled source
                built = _mtime(os.path.join(directory, file))
                if built < _mtime(base + ".py") or built < _mtime(base + ".pxd"):
                    stale.append(os.path.join(directory, file))
    return stale


class SourceWhenStale(importlib.abc.MetaPathFinder):
    """Finds dataplane modules that have both a source and an extension, and picks the source
    when pure Python is requested or the extension is older than the source. Everything else is
    left to the default finders."""

    def __init__(self, *, pure: bool, root: str = PACKAGE_ROOT) -> None:
        self.pure = pure
        self.root = root
        self.stale: list[str] = []
        self._stale_build: list[str] | None = None

    def _build_is_stale(self) -> bool:
        if self._stale_build is None:
            self._stale_build = stale_extensions(self.root)
            if self._stale_build:
                log.warning(
                    "the compiled build is stale (%s is older than its source): every compiled "
                    "module runs from its source; rebuild with `make setup`",
                    ", ".join(os.path.relpath(path, self.root) for path in self._stale_build),
                )
        return bool(self._stale_build)

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: ModuleType | None = None,
    ) -> ModuleSpec | None:
        if path is None or not fullname.startswith("dataplane."):
            return None
        name = fullname.rpartition(".")[2]
        for directory in path:
            source = os.path.join(directory, name + ".py")
            if not os.path.isfile(source):
                continue
            extension = _extension(directory, name)
            if extension is None:
                return None
            if not self.pure:
                if not self._build_is_stale():
                    return None
                self.stale.append(fullname)
            return importlib.util.spec_from_file_location(fullname, source)
        return None


def install() -> SourceWhenStale:
    """Put the finder first on sys.meta_path, once per process."""
    for finder in sys.meta_path:
        if isinstance(finder, SourceWhenStale):
            return finder
    finder = SourceWhenStale(pure=pure_python_requested())
    sys.meta_path.insert(0, finder)
    return finder


def is_compiled(module: ModuleType) -> bool:
    """Whether `module` runs from an extension module (False: from Python source)."""
    spec = getattr(module, "__spec__", None)
    return isinstance(getattr(spec, "loader", None), importlib.machinery.ExtensionFileLoader)
