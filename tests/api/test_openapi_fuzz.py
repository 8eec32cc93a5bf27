"""Schemathesis fuzzes every operation of the served OpenAPI document against a live console
over real HTTP: no answer is a 5xx, and every answer (status, content type, body, headers)
matches the document."""

from __future__ import annotations

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import positive_data_acceptance

from console import tokens
from console.models import Instance
from tests.fixtures.users import make_user

pytestmark = pytest.mark.django_db(transaction=True)
# Examples per operation: every operation is fuzzed in `make test` within a few minutes.
EXAMPLES = 25


@pytest.fixture(autouse=True)
def no_push(monkeypatch: pytest.MonkeyPatch) -> None:
    """This is about the API's answers: no push to dataplane nodes is started."""
    monkeypatch.setattr("listeners.services.queue_push", lambda ids: None)


@pytest.fixture
def bearer(db) -> dict[str, str]:
    user = make_user("fuzzer", "Administrators")
    issued = tokens.issue_token(user=user, name="fuzz", role="admin", days=1)
    return {"Authorization": f"Bearer {issued.secret}"}


@pytest.fixture
def api_schema(live_server, bearer):
    Instance.objects.create(name="fuzzed")
    return schemathesis.openapi.from_url(
        f"{live_server.url}/api/v1/openapi.json", headers=bearer, timeout=30
    )


def test_every_operation_answers_within_its_schema(api_schema, bearer):
    failures: list[str] = []
    operations = [result.ok() for result in api_schema.get_all_operations()]
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def answers_within_schema(case) -> None:
            response = case.call(headers=bearer, timeout=30)
            # Every check but "schema-valid data is accepted": the forms' rules (a name that is
            # not blank, a port not in use, an existing server group) refuse, with a 422 naming
            # the field, much that the schema alone allows.
            case.validate_response(response, excluded_checks=[positive_data_acceptance])

        try:
            answers_within_schema()
        except (AssertionError, FailureGroup) as failure:  # name the operation, run the next
            failures.append(f"{operation.label}: {failure}")
    assert len(operations) >= 40
    assert failures == []


def test_the_document_is_served_only_to_callers_with_credentials(live_server, bearer):
    url = f"{live_server.url}/api/v1/openapi.json"

    anonymous = requests.get(url, timeout=30)
    served = requests.get(url, headers=bearer, timeout=30)

    assert anonymous.status_code == 401
    assert served.json()["openapi"].startswith("3.")
    assert served.json()["components"]["securitySchemes"]["ConsoleAuth"]["scheme"] == "bearer"
    assert "/api/v1/audit-log" in served.json()["paths"]
