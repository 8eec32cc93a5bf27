"""The wizard's first step as a browser submits it: for every protocol, the fields on the page
are all the form requires (UDP and QUIC once required a Session Persistence they do not show)."""

from __future__ import annotations

from html.parser import HTMLParser

import pytest
from django.urls import reverse

from tests.listeners.test_wizard import post_step

pytestmark = pytest.mark.django_db


class Controls(HTMLParser):
    """What a browser would submit from a form fragment: each control's default value."""

    def __init__(self) -> None:
        super().__init__()
        self.values: dict[str, str] = {}
        self._select: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        name = attributes.get("name")
        if tag == "input" and name:
            kind = attributes.get("type", "text")
            if kind == "checkbox":
                if "checked" in attributes:
                    self.values[name] = attributes.get("value") or "on"
            elif kind not in ("submit", "button"):
                self.values.setdefault(name, attributes.get("value") or "")
        elif tag == "textarea" and name:
            self.values[name] = ""
        elif tag == "select" and name:
            self._select = name
        elif tag == "option" and self._select is not None:
            if "selected" in attributes or self._select not in self.values:
                self.values[self._select] = attributes.get("value") or ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "select":
            self._select = None


@pytest.mark.parametrize("protocol", ["http", "https", "tcp", "tcp_ssl", "udp", "quic"])
def test_step_one_as_rendered_submits_for_every_protocol(admin_client, instance, protocol) -> None:
    """Every field a protocol requires is on its page: the defaults as a browser would send
    them pass, so no error can land on a field the user cannot see."""
    fragment = admin_client.get(
        reverse("listener-wizard-options", args=[instance.id]), {"protocol": protocol}
    )
    controls = Controls()
    controls.feed(fragment.content.decode())
    data = {**controls.values, "protocol": protocol, "bandwidth_mbit": "5"}
    response = post_step(admin_client, instance, "protocol", data)
    assert response.status_code == 302, response.context["form"].errors
