"""Guessing passwords at the sign-in page is throttled (django-axes).

Failures count per user name and client address together: 5 wrong passwords for one user from
one address lock that pair for 15 minutes, and the page says until when. The same user from
another address, and another user from the same address, still sign in, so nobody can lock
the admin out of the console from elsewhere.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from axes.models import AccessAttempt
from django.conf import settings
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from tests.fixtures.users import PASSWORD

pytestmark = pytest.mark.django_db

ATTACKER = "198.51.100.7"
OFFICE = "203.0.113.20"


def sign_in(username: str, password: str, address: str = ATTACKER, client: Client | None = None):
    client = client or Client(REMOTE_ADDR=address)
    return client.post(
        reverse("login"), {"username": username, "password": password}, REMOTE_ADDR=address
    )


def test_fifty_wrong_passwords_are_throttled_after_the_limit(admin_user: User) -> None:
    answers = [sign_in(admin_user.username, f"guess-{n}").status_code for n in range(50)]

    limit = settings.AXES_FAILURE_LIMIT
    # Wrong passwords get the form again until the limit; from then on only the lockout.
    assert answers[: limit - 1] == [200] * (limit - 1)
    assert answers[limit - 1 :] == [429] * (50 - limit + 1)
    # Even the right password is refused while the pair is locked out.
    locked = sign_in(admin_user.username, PASSWORD)
    assert locked.status_code == 429
    assert "_auth_user_id" not in locked.wsgi_request.session


def test_the_page_says_when_to_retry(admin_user: User) -> None:
    for n in range(settings.AXES_FAILURE_LIMIT):
        response = sign_in(admin_user.username, f"guess-{n}")

    assert response.status_code == 429
    retry_after = int(response["Retry-After"])
    assert 14 * 60 < retry_after <= 15 * 60
    retry_at = timezone.now() + timedelta(seconds=retry_after)
    page = response.content.decode()
    assert f"Too many failed sign-ins for {admin_user.username} from your address." in page
    assert f"Try again after {retry_at:%H:%M} UTC (in 15 minutes)." in page
    # Still the sign-in page, ready for the retry.
    assert 'name="password"' in page


def test_further_guesses_do_not_push_the_retry_time_back(admin_user: User) -> None:
    for n in range(settings.AXES_FAILURE_LIMIT):
        sign_in(admin_user.username, f"guess-{n}")
    attempt = AccessAttempt.objects.get(username=admin_user.username, ip_address=ATTACKER)
    AccessAttempt.objects.filter(pk=attempt.pk).update(
        attempt_time=attempt.attempt_time - timedelta(minutes=10)
    )

    again = sign_in(admin_user.username, "guess-again")

    assert again.status_code == 429
    assert 4 * 60 < int(again["Retry-After"]) <= 5 * 60


def test_the_right_password_works_after_the_cool_off(admin_user: User) -> None:
    for n in range(settings.AXES_FAILURE_LIMIT):
        sign_in(admin_user.username, f"guess-{n}")
    assert sign_in(admin_user.username, PASSWORD).status_code == 429
    # The cool-off passes (the failures' clock moved back past it).
    AccessAttempt.objects.update(
        attempt_time=timezone.now() - settings.AXES_COOLOFF_TIME - timedelta(seconds=1)
    )

    response = sign_in(admin_user.username, PASSWORD)

    assert response.status_code == 302
    assert response["Location"] == reverse("instance-list")
    # A successful sign-in clears the count: the next mistake starts again from one.
    assert sign_in(admin_user.username, "one-typo").status_code == 200


def test_the_same_user_from_another_address_is_not_locked_out(admin_user: User) -> None:
    for n in range(settings.AXES_FAILURE_LIMIT):
        sign_in(admin_user.username, f"guess-{n}", address=ATTACKER)

    assert sign_in(admin_user.username, PASSWORD, address=OFFICE).status_code == 302


def test_another_user_from_the_same_address_is_not_locked_out(
    admin_user: User, viewer_user: User
) -> None:
    for n in range(settings.AXES_FAILURE_LIMIT):
        sign_in(admin_user.username, f"guess-{n}", address=ATTACKER)

    assert sign_in(viewer_user.username, PASSWORD, address=ATTACKER).status_code == 302


def test_x_forwarded_for_does_not_change_the_address_counted(admin_user: User) -> None:
    client = Client()
    for n in range(settings.AXES_FAILURE_LIMIT):
        client.post(
            reverse("login"),
            {"username": admin_user.username, "password": f"guess-{n}"},
            REMOTE_ADDR=ATTACKER,
            HTTP_X_FORWARDED_FOR=f"192.0.2.{n}",
        )
    response = client.post(
        reverse("login"),
        {"username": admin_user.username, "password": PASSWORD},
        REMOTE_ADDR=ATTACKER,
        HTTP_X_FORWARDED_FOR="192.0.2.99",
    )
    assert response.status_code == 429
