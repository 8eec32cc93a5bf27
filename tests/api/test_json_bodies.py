"""Request bodies are read as strict JSON: what a reviewer reads is what the API applies."""

from __future__ import annotations

import pytest

from listeners.models import AccessControlList

pytestmark = pytest.mark.django_db


def _post(api, raw: bytes | str):
    return api.post("/api/v1/acls", raw, content_type="application/json")


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ('{"name": "office", "name": "anything"}', "'name' appears more than once"),
        (
            '{"name": "office", "entries": [{"cidr": "10.0.0.0/8", "cidr": "0.0.0.0/0"}]}',
            "'cidr' appears more than once",
        ),
        ('{"name": "office", "entries": [], "entries": [{"cidr": "0.0.0.0/0"}]}', "'entries'"),
        ('{"name": "office", "description": NaN}', "NaN is not a JSON number"),
        ('{"name": "office", "x": -Infinity}', "-Infinity is not a JSON number"),
        ('{"name": "office\\ud800"}', "lone surrogate"),
        ('{"name": "office", "entries": [{"cidr": "\\udfff"}]}', "lone surrogate"),
        ('{"\\ud800": 1, "name": "office"}', "lone surrogate"),
    ],
)
def test_ambiguous_json_is_refused_with_the_reason_and_nothing_is_created(api, raw, reason):
    response = _post(api, raw)

    assert response.status_code == 400
    assert response["Content-Type"] == "application/problem+json"
    assert reason in response.json()["detail"]
    assert not AccessControlList.objects.exists()


def test_a_deeply_nested_body_is_a_400_not_a_500(api):
    response = _post(api, "[" * 100_000 + "]" * 100_000)

    assert response.status_code == 400
    assert not AccessControlList.objects.exists()


def test_paired_surrogates_and_plain_unicode_are_text(api):
    response = _post(api, '{"name": "b\\u00fcro \\ud83d\\ude80", "entries": []}')

    assert response.status_code == 201, response.content
    assert AccessControlList.objects.get().name == "büro 🚀"


def test_invalid_json_still_gets_the_plain_400(api):
    response = _post(api, '{"name": ')

    assert response.status_code == 400
    assert response.json()["detail"].startswith("Cannot parse request body")
