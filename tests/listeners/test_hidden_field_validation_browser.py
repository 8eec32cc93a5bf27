"""A field the page hides never blocks a save silently.

A switch (Passive Health Check, Slow Start, Mutual Authentication) or a choice (Session
Persistence, the wizard's Server Group mode) hides its dependent fields with CSS. Chrome's own
constraint validation cannot point at a hidden input: it refuses to submit, shows nothing and
only logs "An invalid form control ... is not focusable". So the console's forms carry
``novalidate`` and the server's per-field messages are the only check; console.css keeps every
field with an error in sight, whatever its switch says.

The browser tests turn a switch on, type an out-of-range number into the field it shows, turn
the switch off and save: the page must answer, with the field's message next to the field. A
visible out-of-range number gets its message next to it too.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from django.urls import reverse

from console.models import Instance
from listeners.models import BackendServer, HealthCheck, Listener, ServerGroup
from tests.fixtures.listeners import make_listener

# -- every form the console posts leaves validation to the server -------------------------------

TEMPLATES = Path(__file__).resolve().parents[2] / "templates"
FORM_TAG = re.compile(r"<form\b[^>]*>", re.IGNORECASE)


def test_every_posting_form_leaves_validation_to_the_server() -> None:
    posting = []
    for template in sorted(TEMPLATES.rglob("*.html")):
        for tag in FORM_TAG.findall(template.read_text()):
            if 'method="post"' in tag:
                posting.append((template.relative_to(TEMPLATES), tag))
    # The wizard, the dialogs, Quick Create, certificates, tokens, sign in and out, ...
    assert len(posting) > 30, posting
    missing = [f"{path}: {tag}" for path, tag in posting if not re.search(r"\snovalidate\b", tag)]
    assert not missing, "posting forms without novalidate:\n" + "\n".join(missing)


# -- in the browser ------------------------------------------------------------------------------


def watch_console(page) -> list[str]:
    """Chrome's messages: a silently blocked submit leaves "... is not focusable" here."""
    messages: list[str] = []
    page.on("console", lambda message: messages.append(message.text))
    return messages


def field_of(scope, label: str):
    """The .field block around the input labelled ``label``: where its errors are shown."""
    page = getattr(scope, "page", scope)  # a filter's inner locator starts from the page
    return scope.locator(".field").filter(has=page.get_by_label(label, exact=True))


def expect_error_next_to(scope, label: str, message: str) -> None:
    from playwright.sync_api import expect

    field = field_of(scope, label)
    expect(field).to_have_class(re.compile(r"\bhas-error\b"))
    expect(field.locator(".error")).to_contain_text(message)
    expect(field.locator(".error")).to_be_visible()
    expect(scope.get_by_label(label, exact=True)).to_be_visible()


def not_focusable(messages: list[str]) -> list[str]:
    return [text for text in messages if "not focusable" in text]


def listener_with_group() -> Listener:
    instance = Instance.objects.create(name="shop")
    group = ServerGroup.objects.create(name="web")
    BackendServer.objects.create(group=group, address="10.0.0.7", port=8080)
    HealthCheck.objects.create(group=group)
    return make_listener(instance, group, status=Listener.Status.RUNNING)


def open_health_check_dialog(page, live_server, listener: Listener):
    page.goto(live_server.url + listener.get_absolute_url())
    page.get_by_role("heading", name="Health Check").get_by_role("link", name="Modify").click()
    return page.get_by_role("dialog")


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_browser_hidden_passive_number_in_the_dialog_is_named_not_swallowed(
    signed_in_page, live_server
) -> None:
    from playwright.sync_api import expect

    listener = listener_with_group()
    group = listener.server_group
    page = signed_in_page
    messages = watch_console(page)
    dialog = open_health_check_dialog(page, live_server, listener)

    switch = dialog.get_by_label("Passive Health Check")
    switch.check()
    dialog.get_by_label("Consecutive Failures", exact=True).fill("0")
    switch.uncheck()
    expect(dialog.get_by_label("Consecutive Failures", exact=True)).to_be_hidden()
    dialog.get_by_role("button", name="Save").click()

    # The server refuses the hidden value and says so next to the field, which comes back into
    # sight though the switch stays off.
    dialog = page.get_by_role("dialog")
    expect_error_next_to(dialog, "Consecutive Failures", "Consecutive Failures must be 1-100.")
    expect(dialog.get_by_label("Passive Health Check")).not_to_be_checked()
    expect(dialog.get_by_label("Base Ejection Time (s)", exact=True)).to_be_hidden()
    assert not not_focusable(messages), messages
    group.refresh_from_db()
    assert group.passive_consecutive_failures == 5

    # Put right, the save goes through with the switch still off.
    dialog.get_by_label("Consecutive Failures", exact=True).fill("7")
    dialog.get_by_role("button", name="Save").click()
    expect(page.get_by_role("dialog")).to_have_count(0)
    expect(page.get_by_text("Health check of web modified.")).to_be_visible()
    group.refresh_from_db()
    assert (group.passive_health_check, group.passive_consecutive_failures) == (False, 7)


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_browser_visible_out_of_range_numbers_are_named_next_to_their_field(
    signed_in_page, live_server
) -> None:
    from playwright.sync_api import expect

    listener = listener_with_group()
    group = listener.server_group
    page = signed_in_page
    messages = watch_console(page)
    dialog = open_health_check_dialog(page, live_server, listener)

    dialog.get_by_label("Passive Health Check").check()
    dialog.get_by_label("Max Ejection Percentage (%)", exact=True).fill("101")
    dialog.get_by_role("button", name="Save").click()
    dialog = page.get_by_role("dialog")
    expect_error_next_to(
        dialog, "Max Ejection Percentage (%)", "Max Ejection Percentage must be 1-100 %."
    )
    expect(dialog.get_by_label("Passive Health Check")).to_be_checked()
    assert not not_focusable(messages), messages
    group.refresh_from_db()
    assert group.passive_health_check is False

    # The server group's page: a visible Slow Start Duration below its range.
    page.goto(live_server.url + reverse("servergroup-edit", args=[group.pk]))
    page.get_by_label("Slow Start", exact=True).check()
    page.get_by_label("Slow Start Duration (s)", exact=True).fill("5")
    page.get_by_role("button", name="Save", exact=True).last.click()
    expect_error_next_to(page, "Slow Start Duration (s)", "Slow Start Duration must be 30-1200 s.")
    assert not not_focusable(messages), messages
    group.refresh_from_db()
    assert group.slow_start is False


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_browser_hidden_slow_start_duration_is_named_not_swallowed(
    signed_in_page, live_server
) -> None:
    from playwright.sync_api import expect

    listener = listener_with_group()
    group = listener.server_group
    page = signed_in_page
    messages = watch_console(page)
    page.goto(live_server.url + reverse("servergroup-edit", args=[group.pk]))

    switch = page.get_by_label("Slow Start", exact=True)
    duration = page.get_by_label("Slow Start Duration (s)", exact=True)
    switch.check()
    duration.fill("5")
    switch.uncheck()
    expect(duration).to_be_hidden()
    page.get_by_role("button", name="Save", exact=True).last.click()

    expect_error_next_to(page, "Slow Start Duration (s)", "Slow Start Duration must be 30-1200 s.")
    expect(page.get_by_label("Slow Start", exact=True)).not_to_be_checked()
    assert not not_focusable(messages), messages

    # Cleared, the duration takes its default and the group saves with slow start off.
    page.get_by_label("Slow Start Duration (s)", exact=True).fill("")
    page.get_by_role("button", name="Save", exact=True).last.click()
    expect(page.get_by_role("heading", name="web", exact=True)).to_be_visible()
    group.refresh_from_db()
    assert (group.slow_start, group.slow_start_duration) == (False, 30)


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_browser_wizard_hidden_numbers_are_named_not_swallowed(signed_in_page, live_server) -> None:
    from playwright.sync_api import expect

    instance = Instance.objects.create(name="shop")
    page = signed_in_page
    messages = watch_console(page)

    # Server Group step: a new group whose Slow Start was on with 5 s, then turned off.
    page.goto(live_server.url + reverse("listener-create-step", args=[instance.id, "servergroup"]))
    form = page.locator("#wizard-form")
    form.get_by_role("radio", name="Create Server Group").check()
    form.get_by_label("Server Group Name", exact=True).fill("pool")
    form.get_by_label("Server Address, row 1", exact=True).fill("10.0.0.11")
    form.get_by_label("Port, row 1", exact=True).fill("8080")
    switch = form.get_by_label("Slow Start", exact=True)
    switch.check()
    form.get_by_label("Slow Start Duration (s)", exact=True).fill("5")
    switch.uncheck()
    expect(form.get_by_label("Slow Start Duration (s)", exact=True)).to_be_hidden()
    form.get_by_role("button", name="Next", exact=True).last.click()
    form = page.locator("#wizard-form")
    expect_error_next_to(form, "Slow Start Duration (s)", "Slow Start Duration must be 30-1200 s.")
    expect(form.get_by_label("Slow Start", exact=True)).not_to_be_checked()
    assert not not_focusable(messages), messages

    # With "Select Existing" the whole Create Server Group part is hidden: its error shows too.
    group = ServerGroup.objects.create(name="existing-web")
    BackendServer.objects.create(group=group, address="10.0.0.7", port=8080)
    # Start over, through step 1 with its defaults, so that the wizard can reach Confirm.
    page.goto(live_server.url + reverse("listener-create", args=[instance.id]) + "?reset=1")
    steps = page.get_by_role("list", name="Wizard steps")
    page.get_by_role("button", name="Next", exact=True).last.click()
    expect(steps.locator("[aria-current=step]")).to_have_text("Server Group")
    form = page.locator("#wizard-form")
    form.get_by_role("radio", name="Create Server Group").check()
    switch = form.get_by_label("Slow Start", exact=True)
    switch.check()
    form.get_by_label("Slow Start Duration (s)", exact=True).fill("5")
    switch.uncheck()
    form.get_by_role("radio", name="Select Existing Server Group").check()
    expect(form.get_by_label("Server Group Name", exact=True)).to_be_hidden()
    form.get_by_label("Select Server Group", exact=True).select_option(group.pk)
    form.get_by_role("button", name="Next", exact=True).last.click()
    form = page.locator("#wizard-form")
    expect_error_next_to(form, "Slow Start Duration (s)", "Slow Start Duration must be 30-1200 s.")
    expect(form.get_by_role("radio", name="Select Existing Server Group")).to_be_checked()
    assert not not_focusable(messages), messages

    # Put right, the step goes on to Health Check.
    form.get_by_label("Slow Start Duration (s)", exact=True).fill("60")
    form.get_by_role("button", name="Next", exact=True).last.click()
    expect(steps.locator("[aria-current=step]")).to_have_text("Health Check")

    # Health Check step: a passive number typed out of range, then the switch turned off.
    form = page.locator("#wizard-form")
    switch = form.get_by_label("Passive Health Check")
    switch.check()
    form.get_by_label("Max Ejection Time (s)", exact=True).fill("0")
    switch.uncheck()
    expect(form.get_by_label("Max Ejection Time (s)", exact=True)).to_be_hidden()
    form.get_by_role("button", name="Next", exact=True).last.click()
    form = page.locator("#wizard-form")
    expect_error_next_to(form, "Max Ejection Time (s)", "Max Ejection Time must be 1-3600 s.")
    expect(form.get_by_label("Consecutive Failures", exact=True)).to_be_hidden()
    assert not not_focusable(messages), messages

    # A visible one is named next to its field as well.
    form.get_by_label("Passive Health Check").check()
    form.get_by_label("Max Ejection Time (s)", exact=True).fill("300")
    form.get_by_label("Consecutive Failures", exact=True).fill("0")
    form.get_by_role("button", name="Next", exact=True).last.click()
    form = page.locator("#wizard-form")
    expect_error_next_to(form, "Consecutive Failures", "Consecutive Failures must be 1-100.")
    form.get_by_label("Consecutive Failures", exact=True).fill("3")
    form.get_by_role("button", name="Next", exact=True).last.click()
    expect(steps.locator("[aria-current=step]")).to_have_text("Confirm")
    assert not not_focusable(messages), messages


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_browser_option_hidden_by_a_choice_is_named_not_swallowed(
    signed_in_page, live_server
) -> None:
    """Session Persistence's timeout shows only for Insert Cookie and Source IP."""
    from playwright.sync_api import expect

    listener = listener_with_group()
    page = signed_in_page
    messages = watch_console(page)
    page.goto(live_server.url + listener.get_absolute_url())
    page.get_by_role("link", name="Modify Listener").click()
    dialog = page.get_by_role("dialog")
    persistence = dialog.get_by_label("Session Persistence", exact=True)
    timeout = dialog.get_by_label("Session Persistence Timeout Period (s)", exact=True)
    persistence.select_option("Insert Cookie")
    timeout.fill("0")
    persistence.select_option("Off")
    expect(timeout).to_be_hidden()
    dialog.get_by_role("button", name="Save").click()

    dialog = page.get_by_role("dialog")
    expect_error_next_to(
        dialog,
        "Session Persistence Timeout Period (s)",
        "Session Persistence Timeout Period must be 1-86400 s.",
    )
    expect(dialog.get_by_label("Session Persistence", exact=True)).to_have_value("none")
    assert not not_focusable(messages), messages

    dialog.get_by_label("Session Persistence Timeout Period (s)", exact=True).fill("1000")
    dialog.get_by_role("button", name="Save").click()
    expect(page.get_by_role("dialog")).to_have_count(0)
    listener.refresh_from_db()
    assert listener.persistence == "none"
