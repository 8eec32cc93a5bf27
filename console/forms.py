"""Forms for instances."""

from __future__ import annotations

from django import forms

from console.models import Instance


class InstanceForm(forms.ModelForm):
    class Meta:
        model = Instance
        fields = ["name", "edition", "bind_address", "listener_quota"]
        labels = {
            "name": "Instance Name",
            "edition": "Edition",
            "bind_address": "Bind Address",
            "listener_quota": "Listener Quota",
        }
        help_texts = {
            "edition": "Basic instances support neither mutual authentication nor "
            "Retrieve Client IP.",
            "listener_quota": "Maximum number of listeners on this instance (1-100).",
        }

    def clean_listener_quota(self) -> int:
        quota = self.cleaned_data["listener_quota"]
        if not 1 <= quota <= 100:
            raise forms.ValidationError("Listener Quota must be between 1 and 100.")
        return quota
