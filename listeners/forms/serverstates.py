"""Change a backend server's state: Enabled, Draining (with its deregistration delay) or
Maintenance."""

from __future__ import annotations

from django import forms

from listeners.forms.ranges import state_ranges
from listeners.models import BackendServer


class ServerStateForm(forms.ModelForm):
    class Meta:
        model = BackendServer
        fields = ["state", "deregistration_delay"]
        labels = {"state": "State", "deregistration_delay": "Deregistration Delay (s)"}
        help_texts = {
            "state": (
                "Draining: the server gets no new requests or connections; those in flight "
                "finish, and what remains after the deregistration delay is closed. "
                "Maintenance: out at once, what remains is closed."
            ),
            "deregistration_delay": "0-3600 s, default 300: how long a draining server may "
            "finish what it serves.",
        }
        widgets = {"state": forms.RadioSelect}

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        state_ranges(self, BackendServer)
