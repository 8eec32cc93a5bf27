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
