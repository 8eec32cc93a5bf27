"""The five predefined TLS security policies, as the dataplane serves them.

The dataplane's table (``dataplane.tls.PREDEFINED_POLICIES``) is the single source: a migration
copies it into TlsPolicy rows so the console can list, compare and reference them, and
``ensure_predefined_policies`` re-creates the rows where a test flushed the database.
"""

from __future__ import annotations

from dataplane.tls import PREDEFINED_POLICIES


def ensure_predefined_policies(policy_model=None) -> None:
    if policy_model is None:
        from listeners.models import TlsPolicy as policy_model
    for name, spec in PREDEFINED_POLICIES.items():
        policy_model.objects.update_or_create(
            id=name,
            defaults={
                "name": name,
                "predefined": True,
                "min_version": spec.min_version,
                "max_version": spec.max_version,
                "ciphers": list(spec.ciphers),
                "tls13_ciphersuites": list(spec.tls13_ciphersuites),
            },
        )
