"""The console's /metrics: pushes to a real node, read back with prometheus_client's parser."""

from __future__ import annotations

import pytest
from django.test import Client
from prometheus_client.parser import text_string_to_metric_families

from console import pipeline
from console.models import DataplaneNode, PushAttempt
from console.tokens import issue_token, revoke_token
from tests.fixtures.processes import free_port
from tests.fixtures.users import make_user

pytestmark = pytest.mark.integration


def _samples(text: str) -> dict[tuple[str, frozenset], float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _value(samples: dict, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


@pytest.fixture
def scraper_token(db) -> str:
    """What Prometheus is given: a Viewer's API token, which only reads."""
    user = make_user("prometheus", "Viewers")
    return issue_token(user=user, name="prometheus", role="viewer", days=30).secret


def _scrape(token: str | None) -> tuple[int, str]:
    headers = {"HTTP_AUTHORIZATION": f"Bearer {token}"} if token is not None else {}
    response = Client().get("/metrics", **headers)
    return response.status_code, response.content.decode()


def test_pushes_reconcile_lag_and_listener_status_from_a_real_node(
    stack, eager_celery, scraper_token
):
    listener = stack.add_listener(free_port(), "web")
    pipeline.reconcile()
    node = DataplaneNode.objects.get()
    labels = {"instance": stack.instance.id, "node": node.name}

    status, text = _scrape(scraper_token)

    assert status == 200
    samples = _samples(text)
    attempts = list(PushAttempt.objects.filter(node=node))
    acks = [attempt for attempt in attempts if attempt.result == "ack"]
    assert acks and len(acks) == len(attempts)
    assert _value(samples, "ferry_console_push_attempts", result="ack", **labels) == len(acks)
    assert _value(samples, "ferry_console_push_attempts", result="nack", **labels) == 0
    ack = {**labels, "result": "ack"}
    assert _value(samples, "ferry_console_push_duration_seconds_gcount", **ack) == len(acks)
    assert _value(samples, "ferry_console_push_duration_seconds_bucket", le="+Inf", **ack) == len(
        acks
    )
    assert _value(samples, "ferry_console_push_duration_seconds_gsum", **ack) == pytest.approx(
        sum(attempt.duration_ms for attempt in acks) / 1000
    )
    assert _value(samples, "ferry_console_node_reachable", **labels) == 1
    assert _value(samples, "ferry_console_node_generation_lag", **labels) == 0
    assert 0 <= _value(samples, "ferry_console_node_status_age_seconds", **labels) < 30
    by_status = {
        status: _value(
            samples, "ferry_console_listeners", instance=stack.instance.id, status=status
        )
        for status in ("configuring", "running", "stopped", "failed")
    }
    assert by_status == {"configuring": 0, "running": 1, "stopped": 0, "failed": 0}
    assert stack.node.status()["listeners"][listener.id]["status"] == "running"


def test_a_node_that_is_down_shows_as_unreachable_and_behind(stack, eager_celery, scraper_token):
    stack.add_listener(free_port(), "web")
    stack.node.kill()

    stack.add_listener(free_port(), "api")

    samples = _samples(_scrape(scraper_token)[1])
    node = DataplaneNode.objects.get()
    labels = {"instance": stack.instance.id, "node": node.name}
    unreachable = PushAttempt.objects.filter(node=node, result="unreachable").count()
    assert unreachable >= 1
    assert (
        _value(samples, "ferry_console_push_attempts", result="unreachable", **labels)
        == unreachable
    )
    assert _value(samples, "ferry_console_node_reachable", **labels) == 0
    assert _value(samples, "ferry_console_node_generation_lag", **labels) == 1


@pytest.mark.django_db
def test_metrics_need_a_token_or_a_session(scraper_token, admin_user):
    assert _scrape(None)[0] == 401
    assert _scrape("ferry_notarealtoken")[0] == 401
    assert _scrape("")[0] == 401
    response = Client().get("/metrics", HTTP_AUTHORIZATION=f"Basic {scraper_token}")
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == 'Bearer realm="ferry"'
    assert "ferry_console" not in response.content.decode()

    assert _scrape(scraper_token)[0] == 200
    signed_in = Client()
    signed_in.force_login(admin_user)
    assert signed_in.get("/metrics").status_code == 200
    assert (
        Client().post("/metrics", HTTP_AUTHORIZATION=f"Bearer {scraper_token}").status_code == 405
    )


@pytest.mark.django_db
def test_a_revoked_token_is_refused(scraper_token):
    from console.models import ApiToken

    token = ApiToken.objects.get(name="prometheus")
    assert _scrape(scraper_token)[0] == 200

    revoke_token(user=token.user, token_id=token.pk)

    assert _scrape(scraper_token)[0] == 401
