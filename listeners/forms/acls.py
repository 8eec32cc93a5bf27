"""Access control (IP address group) form: a name and CIDR entries, one per line.

Each line is "CIDR [description]", e.g. "10.0.0.0/8 office". Every problem is reported with
its line number, so a long paste can be fixed without guessing.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from django import forms

from listeners.models import AccessControlList

MAX_ENTRIES = 1000
MAX_DESCRIPTION = 255

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class ParsedEntry:
    cidr: str
    description: str


def parse_network(text: str) -> Network:
    """The network an entry names; a bare address becomes a /32 or /128.

    Raises ValueError with a message meant for the operator.
    """
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError:
        pass
    try:
        loose = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ValueError(f"“{text}” is not an IPv4 or IPv6 address or CIDR block.") from None
    raise ValueError(
        f"“{text}” has host bits set after the /{loose.prefixlen} prefix; did you mean {loose}?"
    )


def parse_entries(text: str) -> tuple[list[ParsedEntry], list[str]]:
    """Entries and error messages (one per offending line) from the textarea's content."""
    entries: list[ParsedEntry] = []
    errors: list[str] = []
    first_line: dict[Network, int] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        cidr_text, *rest = line.split(None, 1)
        description = rest[0].strip() if rest else ""
        try:
            network = parse_network(cidr_text)
        except ValueError as error:
            errors.append(f"Line {number}: {error}")
            continue
        if network in first_line:
            errors.append(
                f"Line {number}: {network} is already listed on line {first_line[network]}."
            )
            continue
        if len(description) > MAX_DESCRIPTION:
            errors.append(
                f"Line {number}: the description is longer than {MAX_DESCRIPTION} characters."
            )
            continue
        first_line[network] = number
        entries.append(ParsedEntry(str(network), description))
    return entries, errors


def entries_text(acl: AccessControlList) -> str:
    """The textarea content that reproduces an ACL's entries."""
    return "\n".join(f"{entry.cidr} {entry.description}".rstrip() for entry in acl.entries.all())


class AccessControlListForm(forms.ModelForm):
    entries = forms.CharField(
        label="IP Addresses",
        required=False,
        strip=False,
        widget=forms.Textarea(
            attrs={"rows": 10, "placeholder": "10.0.0.0/8 office\n192.168.1.10\n2001:db8::/32"}
        ),
        help_text=f"One entry per line: an IPv4 or IPv6 address or CIDR block, then an optional "
        f"description. A bare address means /32 (IPv4) or /128 (IPv6). At most {MAX_ENTRIES} "
        f"entries.",
    )

    class Meta:
        model = AccessControlList
        fields = ["name", "description"]
        labels = {"name": "IP Address Group Name", "description": "Description"}
        widgets = {"description": forms.TextInput()}

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.instance.pk and not self.is_bound:
            self.initial.setdefault("entries", entries_text(self.instance))
        self.parsed_entries: list[ParsedEntry] = []

    def clean_entries(self) -> str:
        text = self.cleaned_data["entries"]
        entries, errors = parse_entries(text)
        if len(entries) > MAX_ENTRIES:
            errors.insert(
                0,
                f"An IP address group holds at most {MAX_ENTRIES} entries; this has "
                f"{len(entries)}.",
            )
        if errors:
            raise forms.ValidationError(errors)
        self.parsed_entries = entries
        return text
