"""What every page of the shell needs: the user's role and the active navigation entry."""

from __future__ import annotations

from django.http import HttpRequest
from django.urls import NoReverseMatch, reverse

from console.roles import is_administrator

# Shown above a form that a Viewer opened by its URL: the form is there to read, disabled.
READ_ONLY_NOTICE = (
    "You have read-only access (Viewer): this form is shown disabled. Ask an administrator "
    "to make changes."
)

NAVIGATION = (
    ("instances", "Instances", "instance-list", "server"),
    ("certificates", "Certificates", "certificate-list", "shield"),
    ("server-groups", "Server Groups", "servergroup-list", "layers"),
    ("tls-policies", "TLS Security Policies", "tlspolicy-list", "lock"),
    ("access-control", "Access Control", "acl-list", "filter"),
)


def _built_navigation() -> list[tuple[str, str, str, str]]:
    # Only pages that exist are offered; an entry appears once its app provides the URL.
    entries = []
    for section, label, url_name, icon in NAVIGATION:
        try:
            entries.append((section, label, reverse(url_name), icon))
        except NoReverseMatch:
            continue
    return entries


def shell(request: HttpRequest) -> dict[str, object]:
    user = getattr(request, "user", None)
    admin = user is not None and is_administrator(user)
    section = request.path.strip("/").split("/", 1)[0]
    return {
        "can_change": admin,
        "read_only_notice": "" if admin else READ_ONLY_NOTICE,
        "role_name": "Administrator" if admin else "Viewer",
        "navigation": _built_navigation(),
        "nav_section": section,
    }
