"""Dialogs on the listener details page: server group, certificates, TLS policy."""

from __future__ import annotations

from django import forms

from certificates.models import Certificate
from listeners import rules
from listeners.forms.listener import CertificateStepForm, compatible_backend_protocols
from listeners.models import Listener, ServerGroup, TlsPolicy


class ChangeServerGroupForm(forms.Form):
    server_group = forms.ModelChoiceField(
        label="Server Group", queryset=ServerGroup.objects.all(), empty_label=None
    )

    def __init__(self, *args, listener: Listener, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["server_group"].queryset = ServerGroup.objects.filter(
            backend_protocol__in=compatible_backend_protocols(listener.protocol)
        )
        self.fields["server_group"].initial = listener.server_group_id
        self.listener = listener

    def clean_server_group(self) -> ServerGroup:
        group = self.cleaned_data["server_group"]
        if group.is_grpc:
            listener = self.listener
            problems = rules.grpc_conflicts(
                http2=listener.http2,
                persistence=listener.persistence,
                compression=listener.compression,
                bandwidth_mbit=listener.bandwidth_mbit,
                forwarding_rules=listener.rules.count(),
            )
            if problems:
                raise forms.ValidationError(
                    [f"{group.name} is gRPC: {problem}" for _, problem in problems]
                )
        return group


class ManageCertificatesForm(CertificateStepForm):
    """Manage Certificates: default and additional certificates, and mutual authentication."""

    def __init__(self, *args, listener: Listener, **kwargs) -> None:
        super().__init__(*args, instance=listener.instance, protocol=listener.protocol, **kwargs)
        self.listener = listener
        if "tls_policy" in self.fields:
            # The TLS policy has its own dialog; keep the listener's for the compatibility check.
            self.fields["tls_policy"].required = False
            self.fields["tls_policy"].widget = forms.HiddenInput()
        self.initial.setdefault("tls_policy", listener.tls_policy_id)


class TlsPolicyForm(forms.Form):
    tls_policy = forms.ModelChoiceField(
        label="TLS Security Policy", queryset=TlsPolicy.objects.all(), empty_label=None
    )

    def __init__(self, *args, listener: Listener, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.listener = listener
        self.fields["tls_policy"].initial = listener.tls_policy_id

    def clean_tls_policy(self) -> TlsPolicy:
        policy = self.cleaned_data["tls_policy"]
        certificates: list[Certificate] = [
            c for c in [self.listener.default_certificate] if c is not None
        ] + list(self.listener.additional_certificates.all())
        for certificate in certificates:
            problem = rules.policy_cannot_serve(policy, certificate)
            if problem:
                raise forms.ValidationError(problem)
        return policy
