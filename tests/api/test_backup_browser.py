"""In a real Chromium: Export from the instance page downloads the document; Import Instance
lists a bad file's problems next to the file field, then creates the instance from a good one,
within the console's Content-Security-Policy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from console.models import Instance
from tests.api.test_backup_restore import PASSPHRASE, Source
from tests.fixtures.processes import free_port
from tests.security.test_console_csp_browser import Violations

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True, serialized_rollback=True)]


@pytest.fixture(autouse=True)
def no_push(monkeypatch: pytest.MonkeyPatch) -> None:
    """About the pages: no push is queued (the live server runs in this process)."""
    monkeypatch.setattr("listeners.services.queue_push", lambda ids: None)


def test_export_downloads_and_import_lists_problems_then_creates(
    signed_in_page: Page, live_server, tmp_path: Path
) -> None:
    page = signed_in_page
    violations = Violations()
    violations.watch(page)
    origin = Instance.objects.create(name="origin")
    Source(origin, free_port(), http_port=free_port(), https_port=free_port())

    # Export: the passphrase twice, then a .json file is downloaded.
    page.goto(f"{live_server.url}/instances/{origin.pk}/listeners/")
    page.get_by_role("link", name="Export").click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_label("Passphrase", exact=True).fill(PASSPHRASE)
    dialog.get_by_label("Repeat Passphrase").fill(PASSPHRASE)
    with page.expect_download() as download_info:
        dialog.get_by_role("button", name="Export").click()
    download = download_info.value
    assert download.suggested_filename == f"origin-{origin.pk}.json"
    saved = tmp_path / download.suggested_filename
    download.save_as(saved)
    document = json.loads(saved.read_text())
    assert len(document["listeners"]) == 3

    # Import a broken copy: nothing is created, every problem is listed under the file field.
    broken = json.loads(json.dumps(document))
    broken["listeners"][0]["port"] = 0
    broken["listeners"][1]["colour"] = "blue"
    bad_file = tmp_path / "broken.json"
    bad_file.write_text(json.dumps(broken))
    page.goto(f"{live_server.url}/instances/")
    page.get_by_role("link", name="Import Instance").click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_label("Backup File").set_input_files(bad_file)
    dialog.get_by_label("Passphrase").fill(PASSPHRASE)
    dialog.get_by_label("Instance Name").fill("restored")
    dialog.get_by_role("button", name="Import").click()
    problems = page.locator("#id_document_errors")
    expect(problems).to_contain_text("listeners[0].port:")
    expect(problems).to_contain_text("listeners[1].colour: Unknown field colour.")
    assert not Instance.objects.filter(name="restored").exists()

    # Import the good file: the new instance's Listener tab shows its three listeners.
    dialog = page.get_by_role("dialog")
    dialog.get_by_label("Backup File").set_input_files(saved)
    dialog.get_by_label("Passphrase").fill(PASSPHRASE)
    dialog.get_by_label("Instance Name").fill("restored")
    dialog.get_by_role("button", name="Import").click()
    expect(page.get_by_role("heading", name="restored")).to_be_visible()
    for name in ("plain", "secure", "raw"):
        expect(page.get_by_role("link", name=name, exact=True)).to_be_visible()
    assert Instance.objects.get(name="restored").listeners.count() == 3
    assert violations == []
