"""The hot path runs compiled after a build, from source when asked or when the build is stale."""

from __future__ import annotations

import ast
import importlib.machinery
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from dataplane.compiled import SourceWhenStale

ROOT = Path(__file__).resolve().parents[2]
SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]


def _compiled_list() -> tuple[str, ...]:
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "COMPILED":
            return ast.literal_eval(node.value)
    raise AssertionError("setup.py has no COMPILED list")


def _loaded_from(module: str, **env: str) -> str:
    code = f"import {module} as m; print(type(m.__spec__.loader).__name__)"
    result = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    return result.stdout.strip()


def _pair(directory: Path, *, source_newer: bool, name: str = "mod") -> None:
    (directory / f"{name}.py").write_text("VALUE = 1\n")
    (directory / f"{name}{SUFFIX}").write_bytes(b"not loaded by these tests")
    extension, source = name + SUFFIX, f"{name}.py"
    older, newer = (extension, source) if source_newer else (source, extension)
    os.utime(directory / older, (1_000_000, 1_000_000))
    os.utime(directory / newer, (2_000_000, 2_000_000))


def test_a_fresh_extension_is_left_to_python(tmp_path):
    _pair(tmp_path, source_newer=False)

    finder = SourceWhenStale(pure=False, root=str(tmp_path))

    assert finder.find_spec("dataplane.mod", [str(tmp_path)]) is None


def test_an_extension_older_than_its_source_gives_way_to_the_source(tmp_path):
    _pair(tmp_path, source_newer=True)
    finder = SourceWhenStale(pure=False, root=str(tmp_path))

    spec = finder.find_spec("dataplane.mod", [str(tmp_path)])

    assert spec is not None and spec.origin == str(tmp_path / "mod.py")
    assert finder.stale == ["dataplane.mod"]


def test_one_stale_extension_makes_the_whole_build_run_from_source(tmp_path):
    # A fresh extension may cimport a type from the stale one's module, which now runs as Python.
    _pair(tmp_path, source_newer=False, name="fresh")
    protocols = tmp_path / "protocols"
    protocols.mkdir()
    _pair(protocols, source_newer=True, name="edited")
    finder = SourceWhenStale(pure=False, root=str(tmp_path))

    spec = finder.find_spec("dataplane.fresh", [str(tmp_path)])

    assert spec is not None and spec.origin == str(tmp_path / "fresh.py")


def test_declarations_newer_than_the_extension_make_it_stale(tmp_path):
    _pair(tmp_path, source_newer=False)
    (tmp_path / "mod.pxd").write_text("cdef class Mod:\n    pass\n")
    os.utime(tmp_path / "mod.pxd", (3_000_000, 3_000_000))
    finder = SourceWhenStale(pure=False, root=str(tmp_path))

    spec = finder.find_spec("dataplane.mod", [str(tmp_path)])

    assert spec is not None and spec.origin == str(tmp_path / "mod.py")
    assert finder.stale == ["dataplane.mod"]


def test_pure_python_takes_the_source_even_from_a_fresh_build(tmp_path):
    _pair(tmp_path, source_newer=False)

    finder = SourceWhenStale(pure=True, root=str(tmp_path))

    spec = finder.find_spec("dataplane.mod", [str(tmp_path)])

    assert spec is not None and spec.origin == str(tmp_path / "mod.py")


def test_modules_outside_the_dataplane_and_without_an_extension_are_not_touched(tmp_path):
    _pair(tmp_path, source_newer=True)
    (tmp_path / "plain.py").write_text("")
    finder = SourceWhenStale(pure=True, root=str(tmp_path))

    assert finder.find_spec("other.mod", [str(tmp_path)]) is None
    assert finder.find_spec("dataplane.plain", [str(tmp_path)]) is None
    assert finder.find_spec("dataplane", None) is None


def test_every_listed_module_exists_and_is_not_a_package_init():
    listed = _compiled_list()

    assert listed
    for path in listed:
        assert (ROOT / path).is_file(), path
        assert not path.endswith("__init__.py"), path


@pytest.mark.parametrize("path", _compiled_list())
def test_the_environment_variable_runs_each_listed_module_from_source(path):
    module = path[:-3].replace("/", ".")

    assert _loaded_from(module, FERRY_PURE_PYTHON="1") == "SourceFileLoader"


def test_a_build_runs_the_listed_modules_compiled():
    built = [p for p in _compiled_list() if (ROOT / (p[:-3] + SUFFIX)).exists()]
    if not built:
        pytest.skip("built with FERRY_PURE_PYTHON=1: no extensions to load")
    fresh = [
        p for p in built if (ROOT / (p[:-3] + SUFFIX)).stat().st_mtime >= (ROOT / p).stat().st_mtime
    ]

    loaders = {p: _loaded_from(p[:-3].replace("/", "."), FERRY_PURE_PYTHON="") for p in fresh}

    assert set(loaders.values()) <= {"ExtensionFileLoader"}, loaders


def _declared_fields(pxd: Path) -> dict[str, set[str]]:
    """`cdef public TYPE name` lines of each `cdef class` in a .pxd."""
    fields: dict[str, set[str]] = {}
    current = None
    for line in pxd.read_text().splitlines():
        if match := re.match(r"cdef class (\w+)", line):
            current = fields.setdefault(match[1], set())
        elif match := re.match(r"\s+cdef public \w+ (\w+)$", line):
            current.add(match[1])  # type: ignore[union-attr]
    return fields


def _slots(source: Path) -> dict[str, set[str]]:
    slots = {}
    for node in ast.parse(source.read_text()).body:
        if isinstance(node, ast.ClassDef):
            for statement in node.body:
                if (
                    isinstance(statement, ast.Assign)
                    and getattr(statement.targets[0], "id", "") == "__slots__"
                ):
                    slots[node.name] = set(ast.literal_eval(statement.value))
    return slots


@pytest.mark.parametrize(
    "path", [p for p in _compiled_list() if (ROOT / (p[:-3] + ".pxd")).exists()]
)
def test_each_extension_type_declares_exactly_its_slots(path):
    # A slot missing from the .pxd would be an AttributeError only in the compiled build.
    declared = _declared_fields(ROOT / (path[:-3] + ".pxd"))
    slots = _slots(ROOT / path)

    assert declared
    for name, fields in declared.items():
        assert fields == slots.get(name), name
