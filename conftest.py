"""Root conftest: the fixture modules every test may use."""

import os

# Playwright's sync API runs an event loop in the test thread; Django's ORM calls from that
# thread are still synchronous, so allow them.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

pytest_plugins = [
    "tests.fixtures.users",
    "tests.fixtures.browser",
    "tests.fixtures.instances",
    "tests.fixtures.listeners",
    "tests.fixtures.nodes",
    "tests.fixtures.processes",
    "tests.fixtures.single_node",
]


def pytest_collection_modifyitems(config, items) -> None:
    # A test that drives the browser is a browser test, whether or not its author marked it:
    # `make test` runs those in their own process (see the Makefile).
    import pytest

    for item in items:
        if "page" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.e2e)
    _refuse_mixed_rollback(items)


def _refuse_mixed_rollback(items) -> None:
    # A transactional test ends with a flush. Without serialized rollback the flush re-creates
    # the content types under new ids; with it the next test restores the originals and collides
    # with those. So one process must run its transactional tests one way only: browser tests
    # serialized (they need the permissions), the rest not.
    import pytest

    wrong = []
    for item in items:
        marker = item.get_closest_marker("django_db")
        if marker is None or not marker.kwargs.get("transaction"):
            continue
        browser = "page" in getattr(item, "fixturenames", ())
        if bool(marker.kwargs.get("serialized_rollback")) != browser:
            wrong.append(item.nodeid)
    if wrong:
        raise pytest.UsageError(
            "browser tests take django_db(transaction=True, serialized_rollback=True) and no "
            "other test takes serialized_rollback; these do not: " + ", ".join(wrong)
        )
