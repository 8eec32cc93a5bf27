"""Forms for instances."""

from __future__ import annotations

from django import forms

from console.models import DataplaneNode, Instance


class InstanceForm(forms.ModelForm):
    class Meta:
        model = Instance
        fields = ["name", "edition", "bind_address", "listener_quota", "bandwidth_mbit"]
        labels = {
            "name": "Instance Name",
            "edition": "Edition",
            "bind_address": "Bind Address",
            "listener_quota": "Listener Quota",
            "bandwidth_mbit": "Bandwidth (Mbit/s)",
        }
        help_texts = {
            "edition": "Basic instances support neither mutual authentication nor "
            "Retrieve Client IP.",
            "listener_quota": "Maximum number of listeners on this instance (1-100).",
            "bandwidth_mbit": "Optional. Listener bandwidth limits may not add up to more.",
        }

    def clean_listener_quota(self) -> int:
        quota = self.cleaned_data["listener_quota"]
        if not 1 <= quota <= 100:
            raise forms.ValidationError("Listener Quota must be between 1 and 100.")
        return quota


class DataplaneNodeForm(forms.ModelForm):
    token = forms.CharField(
        label="Control API Token",
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "off"}),
        help_text="The node's --token-file contents. Stored encrypted; never shown again.",
        min_length=16,
    )

    class Meta:
        model = DataplaneNode
        fields = ["name", "control_url"]
        labels = {"name": "Node Name", "control_url": "Control URL"}

    def __init__(self, *args, instance_obj: Instance, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.instance_obj = instance_obj

    def clean_name(self) -> str:
        name = self.cleaned_data["name"]
        if DataplaneNode.objects.filter(instance=self.instance_obj, name=name).exists():
            raise forms.ValidationError(f"This instance already has a node named {name}.")
        return name

    def save(self, commit: bool = True) -> DataplaneNode:
        node = super().save(commit=False)
        node.instance = self.instance_obj
        node.token = self.cleaned_data["token"]
        if commit:
            node.save()
        return node
