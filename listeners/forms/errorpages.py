"""A listener's own page for a 502, 503 or 504 the node answers, or for Maintenance (issue 20).

The body is what the operator wrote: the console shows it escaped, never as markup of its own
pages. Its limits are the snapshot schema's (dataplane.config ERROR_PAGE_*), so a page the form
takes is one every node can serve.
"""

from __future__ import annotations

import json
import re

from django import forms

from dataplane import config as snapshot_schema
from listeners.models import ErrorPage

MAX_BYTES = snapshot_schema.ERROR_PAGE_MAX_BYTES
# Characters no text page holds: C0 controls other than tab, line feed and carriage return (NUL
# cannot even be stored), and U+FFFD, which is what bytes that were not UTF-8 become once a
# browser's form submission is decoded.
_NOT_TEXT = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ufffd]")


def body_problem(body: str, content_type: str) -> str | None:
    """Why a page body cannot be served with this content type; None when it can."""
    try:
        size = len(body.encode("utf-8"))
    except UnicodeEncodeError:
        # Lone surrogates, which a JSON string may carry as \\ud800 escapes.
        return "Page Body must be UTF-8 text."
    if _NOT_TEXT.search(body):
        return "Page Body must be UTF-8 text: it holds control characters or bytes that are not."
    if size > MAX_BYTES:
        return f"Page Body must be at most {MAX_BYTES:,} bytes (64 KiB); it is {size:,} bytes."
    if content_type == ErrorPage.ContentType.JSON:
        try:
            json.loads(body)
        except ValueError as error:
            reason = getattr(error, "msg", str(error))
            where = (
                f" (line {error.lineno}, column {error.colno})"
                if isinstance(error, json.JSONDecodeError)
                else ""
            )
            return f"Page Body is not valid JSON: {reason}{where}."
    return None


class ErrorPageForm(forms.Form):
    """Set or edit one page; the status comes from the URL, one page per status."""

    content_type = forms.ChoiceField(
        label="Content Type",
        choices=ErrorPage.ContentType.choices,
        initial=ErrorPage.ContentType.HTML,
    )
    # Kept exactly as written: whitespace is part of a page.
    body = forms.CharField(
        label="Page Body",
        strip=False,
        # Its characters, which the bytes check above then bounds; a browser stops typing here.
        max_length=MAX_BYTES,
        widget=forms.Textarea(attrs={"rows": 14, "class": "mono", "spellcheck": "false"}),
        help_text="Up to 64 KiB of UTF-8 text, sent as it is with the content type above.",
        error_messages={
            "max_length": f"Page Body must be at most {MAX_BYTES:,} bytes (64 KiB).",
            "required": "Page Body is required; use Remove to go back to the plain answer.",
        },
    )

    def clean(self) -> dict:
        cleaned = super().clean()
        body, content_type = cleaned.get("body"), cleaned.get("content_type")
        if body is not None and content_type:
            problem = body_problem(body, content_type)
            if problem:
                self.add_error("body", problem)
        return cleaned
