"""The README stands on its own: its links stay inside the repository and resolve."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
# [text](target) links, not images; anchors and absolute URLs are checked apart.
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


def test_relative_links_resolve_inside_the_repository() -> None:
    targets = [t for t in LINK.findall(README) if not t.startswith(("http://", "https://", "#"))]
    assert targets, "the README links the docs it relies on"
    for target in targets:
        path = (ROOT / target.split("#")[0]).resolve()
        assert path.is_relative_to(ROOT), f"{target} is outside the repository"
        assert path.exists(), f"{target} does not exist"


def test_anchors_name_sections_of_the_readme() -> None:
    headings = {
        re.sub(r"[^\w\- ]", "", line.lstrip("#").strip()).lower().replace(" ", "-")
        for line in README.splitlines()
        if line.startswith("#")
    }
    anchors = [t[1:] for t in LINK.findall(README) if t.startswith("#")]
    assert "architecture" in anchors
    assert set(anchors) <= headings


def test_the_architecture_section_covers_what_a_contributor_needs() -> None:
    section = README.split("## Architecture", 1)[1].split("\n## ", 1)[0]
    for heading in (
        "### Packages",
        "### The write path",
        "### The push pipeline",
        "### The status model",
        "### Where new code goes",
    ):
        assert heading in section
    for package in ("console/", "listeners/", "certificates/", "dataplane/"):
        assert f"| `{package}`" in section


def test_createuser_documents_the_prompt_and_password_env() -> None:
    assert "prompts for the\npassword on the terminal" in README
    assert "--password-env" in README
