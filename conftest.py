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
]
