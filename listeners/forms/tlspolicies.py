"""Custom TLS security policy form: a version range and the cipher suites for it.

The suites offered are exactly those the dataplane accepts (``dataplane.config``), so a policy
saved here never makes a snapshot fail validation.
"""

from __future__ import annotations

from django import forms

from dataplane.config import PREDEFINED_TLS_POLICIES, TLS12_CIPHERS, TLS13_CIPHERSUITES
from listeners.models import TlsPolicy, TlsVersion

VERSION_ORDER = list(TlsVersion.values)


def _rank(version: str) -> int:
    return VERSION_ORDER.index(version)


class TlsPolicyForm(forms.ModelForm):
    ciphers = forms.MultipleChoiceField(
        label="Cipher Suites (TLS 1.0-1.2)",
        choices=[(name, name) for name in TLS12_CIPHERS],
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="Used when a client negotiates TLS 1.2 or earlier.",
    )
    tls13_ciphersuites = forms.MultipleChoiceField(
        label="TLS 1.3 Cipher Suites",
        choices=[(name, name) for name in TLS13_CIPHERSUITES],
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="Used when a client negotiates TLS 1.3.",
    )

    class Meta:
        model = TlsPolicy
        fields = [
            "name",
            "min_version",
            "max_version",
            "ciphers",
            "tls13_ciphersuites",
            "description",
        ]
        labels = {
            "name": "Policy Name",
            "min_version": "Minimum TLS Version",
            "max_version": "Maximum TLS Version",
            "description": "Description",
        }
        widgets = {"description": forms.TextInput()}

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        for name in ("min_version", "max_version"):
            # Both are required, so the empty "---------" choice would only invite an error.
            self.fields[name].choices = TlsVersion.choices
            if not self.initial.get(name):
                self.initial[name] = TlsVersion.TLS12

    def clean_name(self) -> str:
        name = self.cleaned_data["name"].strip()
        if name.lower() in PREDEFINED_TLS_POLICIES:
            raise forms.ValidationError(f"{name} is the name of a predefined policy.")
        others = TlsPolicy.objects.filter(name__iexact=name).exclude(pk=self.instance.pk)
        if others.exists():
            raise forms.ValidationError(f"A TLS security policy named {name} already exists.")
        return name

    def clean(self) -> dict:
        cleaned = super().clean()
        low, high = cleaned.get("min_version"), cleaned.get("max_version")
        if not low or not high:
            return cleaned
        if _rank(low) > _rank(high):
            self.add_error(
                "max_version",
                f"Maximum TLS Version must not be lower than the minimum "
                f"({TlsVersion(low).label}).",
            )
            return cleaned
        below_13 = _rank(low) < _rank(TlsVersion.TLS13)
        with_13 = high == TlsVersion.TLS13
        if below_13 and not cleaned.get("ciphers") and "ciphers" not in self.errors:
            self.add_error(
                "ciphers",
                "Select at least one cipher suite for TLS 1.2 and earlier: the range starts at "
                f"{TlsVersion(low).label}.",
            )
        suites_invalid = "tls13_ciphersuites" in self.errors
        if with_13 and not cleaned.get("tls13_ciphersuites") and not suites_invalid:
            self.add_error(
                "tls13_ciphersuites",
                "Select at least one TLS 1.3 cipher suite: the range includes TLS 1.3.",
            )
        # Suites for versions outside the range would never be negotiated; storing them would
        # only mislead whoever reads the policy later.
        if not below_13:
            cleaned["ciphers"] = []
        if not with_13:
            cleaned["tls13_ciphersuites"] = []
        if not self.errors and self.instance.pk:
            self._check_listener_certificates(cleaned)
        return cleaned

    def _check_listener_certificates(self, cleaned: dict) -> None:
        """Refuse an edit that leaves a listener with a certificate the policy cannot serve."""
        candidate = TlsPolicy(
            min_version=cleaned["min_version"],
            max_version=cleaned["max_version"],
            ciphers=cleaned["ciphers"],
            tls13_ciphersuites=cleaned["tls13_ciphersuites"],
        )
        listeners = self.instance.listeners.select_related("default_certificate").prefetch_related(
            "additional_certificates"
        )
        for listener in listeners.order_by("name"):
            certificates = [listener.default_certificate, *listener.additional_certificates.all()]
            for certificate in certificates:
                if certificate is not None and not candidate.can_serve(certificate.key_algorithm):
                    self.add_error(
                        "ciphers",
                        f"Listener {listener.name} ({listener.id}) uses the "
                        f"{certificate.key_algorithm} certificate {certificate.name}; keep at "
                        f"least one {certificate.key_algorithm} cipher suite.",
                    )
                    return

    def clean_ciphers(self) -> list[str]:
        # Keep the canonical order, whatever order the browser sent.
        chosen = set(self.cleaned_data["ciphers"])
        return [name for name in TLS12_CIPHERS if name in chosen]

    def clean_tls13_ciphersuites(self) -> list[str]:
        chosen = set(self.cleaned_data["tls13_ciphersuites"])
        return [name for name in TLS13_CIPHERSUITES if name in chosen]
