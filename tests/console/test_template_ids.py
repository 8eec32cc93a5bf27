"""Resource IDs such as lsn-8afim7ex are one token on every page: no line break at the hyphen."""

from __future__ import annotations

import re
from pathlib import Path

TEMPLATES = Path(__file__).resolve().parents[2] / "templates"
# An ID shown as text: the element's opening tag, then the ID as its first content.
SHOWN_ID = re.compile(r"<(\w+)([^<>]*)>\{\{ [a-z_.]+\.id \}\}")


def test_every_shown_id_is_marked_as_one_token() -> None:
    shown = []
    for template in sorted(TEMPLATES.rglob("*.html")):
        for match in SHOWN_ID.finditer(template.read_text()):
            shown.append((template.relative_to(TEMPLATES), match.group(0)))
    assert len(shown) > 20  # lists, details pages and delete dialogs all show IDs
    unmarked = [item for item in shown if "resource-id" not in item[1]]
    assert unmarked == []


def test_the_stylesheet_keeps_a_resource_id_on_one_line() -> None:
    css = (TEMPLATES.parent / "static" / "css" / "console.css").read_text()
    rule = re.search(r"\.resource-id[^{]*\{([^}]*)\}", css)
    assert rule is not None
    assert "white-space: nowrap" in rule.group(1)
