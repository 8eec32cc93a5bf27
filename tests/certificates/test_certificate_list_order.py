"""The Certificates list is newest first, whether or not listeners use the certificates."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from certificates.models import Certificate
from certificates.validation import validate_server_certificate
from console.models import Instance
from listeners.models import ServerGroup
from tests.factories.certs import make_server_cert
from tests.fixtures.listeners import make_listener

pytestmark = pytest.mark.django_db


def stored(name: str, age_days: int) -> Certificate:
    material = make_server_cert("ec-p256", sans=[f"{name}.example.test"])
    certificate = Certificate(name=name, kind=Certificate.Kind.SERVER)
    certificate.apply_validated(
        validate_server_certificate(material.cert_pem, material.key_pem, None)
    )
    certificate.save()
    Certificate.objects.filter(pk=certificate.pk).update(
        created_at=timezone.now() - timedelta(days=age_days)
    )
    return certificate


def test_newest_certificate_is_listed_first(
    admin_client: Client, instance: Instance, server_group: ServerGroup
) -> None:
    # Given certificates of different ages, the oldest used by two listeners (the usage count
    # is an aggregate, which is where the model's ordering used to be lost)
    oldest = stored("oldest", 30)
    middle = stored("middle", 10)
    newest = stored("newest", 0)
    for port in (443, 8443):
        make_listener(
            instance, server_group, port=port, protocol="https", default_certificate=oldest
        )

    response = admin_client.get(reverse("certificate-list"))

    listed = list(response.context["certificates"])
    assert [c.name for c in listed] == ["newest", "middle", "oldest"]
    assert [c.usage for c in listed] == [0, 0, 2]
    page = response.content.decode()
    assert page.index(newest.id) < page.index(middle.id) < page.index(oldest.id)
