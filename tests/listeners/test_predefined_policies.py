"""The console's predefined TLS policies are exactly the ones the dataplane serves."""

from __future__ import annotations

import pytest

from dataplane.tls import PREDEFINED_POLICIES
from listeners.models import TlsPolicy

pytestmark = pytest.mark.django_db


def test_rows_match_the_dataplane_table() -> None:
    rows = {policy.id: policy for policy in TlsPolicy.objects.filter(predefined=True)}
    assert set(rows) == set(PREDEFINED_POLICIES)
    for name, spec in PREDEFINED_POLICIES.items():
        row = rows[name]
        assert (row.min_version, row.max_version) == (spec.min_version, spec.max_version)
        assert row.ciphers == list(spec.ciphers)
        assert row.tls13_ciphersuites == list(spec.tls13_ciphersuites)


def test_strict_policy_serves_both_key_types_and_legacy_needs_no_tls13() -> None:
    strict = TlsPolicy.objects.get(pk="tls_cipher_policy_1_2_strict")
    assert strict.can_serve("ECDSA") and strict.can_serve("RSA")
    assert TlsPolicy.objects.get(pk="tls_cipher_policy_1_2_strict_with_1_3").versions == [
        "TLSv1.2",
        "TLSv1.3",
    ]
