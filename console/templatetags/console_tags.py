"""Template helpers of the console shell."""

from __future__ import annotations

from django import template
from django.urls import NoReverseMatch, reverse

register = template.Library()


@register.filter
def crumb_url(target: str) -> str:
    """A breadcrumb target is a URL name (no arguments) or an already resolved path."""
    if target.startswith("/"):
        return target
    try:
        return reverse(target)
    except NoReverseMatch:
        return "#"
