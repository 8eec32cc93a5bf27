"""The five predefined TLS security policies, named as in the ALB console.

Reference data: a migration creates the rows, and ``ensure_predefined_policies`` re-creates them
where a test flushed the database. tests/listeners/test_predefined_policies.py checks that they
match what the dataplane serves under the same names.
"""

from __future__ import annotations

ECDHE_CBC = [
    "ECDHE-ECDSA-AES128-SHA",
    "ECDHE-ECDSA-AES256-SHA",
    "ECDHE-RSA-AES128-SHA",
    "ECDHE-RSA-AES256-SHA",
]
ECDHE_STRONG = [
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-AES128-SHA256",
    "ECDHE-ECDSA-AES256-SHA384",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES128-SHA256",
    "ECDHE-RSA-AES256-SHA384",
]
RSA_KX = ["AES128-GCM-SHA256", "AES256-GCM-SHA384", "AES128-SHA256", "AES256-SHA256"]
LEGACY = [*ECDHE_STRONG, *RSA_KX, *ECDHE_CBC, "AES128-SHA", "AES256-SHA", "DES-CBC3-SHA"]
TLS13 = [
    "TLS_AES_128_GCM_SHA256",
    "TLS_AES_256_GCM_SHA384",
    "TLS_CHACHA20_POLY1305_SHA256",
    "TLS_AES_128_CCM_SHA256",
    "TLS_AES_128_CCM_8_SHA256",
]

POLICIES = [
    ("tls_cipher_policy_1_0", "TLSv1.0", "TLSv1.2", LEGACY, []),
    ("tls_cipher_policy_1_1", "TLSv1.1", "TLSv1.2", LEGACY, []),
    ("tls_cipher_policy_1_2", "TLSv1.2", "TLSv1.2", LEGACY, []),
    ("tls_cipher_policy_1_2_strict", "TLSv1.2", "TLSv1.2", [*ECDHE_STRONG, *ECDHE_CBC], []),
    (
        "tls_cipher_policy_1_2_strict_with_1_3",
        "TLSv1.2",
        "TLSv1.3",
        [*ECDHE_STRONG, *ECDHE_CBC],
        TLS13,
    ),
]


def ensure_predefined_policies(policy_model=None) -> None:
    if policy_model is None:
        from listeners.models import TlsPolicy as policy_model
    for name, low, high, ciphers, suites in POLICIES:
        policy_model.objects.update_or_create(
            id=name,
            defaults={
                "name": name,
                "predefined": True,
                "min_version": low,
                "max_version": high,
                "ciphers": ciphers,
                "tls13_ciphersuites": suites,
            },
        )
