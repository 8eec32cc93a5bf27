"""Export and Import on the instance pages (console/backup.py has the document and the rules).

Export asks for the passphrase twice and answers with the document as a file download, so its
form is a plain POST (htmx would swap the file into the page). Import takes the file and the
passphrase; every problem of the document is listed next to the file field.
"""

from __future__ import annotations

import json
import re
from typing import Any

from django import forms
from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404
from django.urls import reverse
from django.views.decorators.debug import sensitive_post_parameters
from django.views.decorators.http import require_http_methods

from console import backup
from console.htmx import redirect_after_change, render_dialog
from console.models import Instance
from listeners.services import NotFound, RuleViolation

CRUMBS = [("Instances", "instance-list")]
MAX_MIB = backup.MAX_DOCUMENT_BYTES // (1024 * 1024)


class ExportForm(forms.Form):
    passphrase = forms.CharField(
        label="Passphrase",
        min_length=backup.MIN_PASSPHRASE,
        max_length=backup.MAX_PASSPHRASE,
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
        help_text=f"At least {backup.MIN_PASSPHRASE} characters. It encrypts the private keys in "
        "the file and is needed to import it; it is not stored anywhere.",
    )
    confirm = forms.CharField(
        label="Repeat Passphrase",
        max_length=backup.MAX_PASSPHRASE,
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
    )

    def clean(self) -> dict:
        cleaned = super().clean()
        if cleaned.get("passphrase") and cleaned.get("confirm") != cleaned["passphrase"]:
            self.add_error("confirm", "The passphrases differ; type the same one twice.")
        return cleaned


def _no_repeated_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise ValueError(f"The key {key} appears twice in one object.")
        seen[key] = value
    return seen


class ImportForm(forms.Form):
    document = forms.FileField(
        label="Backup File",
        help_text=f"A .json file from Export, at most {MAX_MIB} MiB.",
        widget=forms.ClearableFileInput(attrs={"accept": ".json,application/json"}),
    )
    passphrase = forms.CharField(
        label="Passphrase",
        required=False,
        max_length=backup.MAX_PASSPHRASE,
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "off"}),
        help_text="The passphrase given at export.",
    )
    name = forms.CharField(
        label="Instance Name",
        required=False,
        max_length=128,
        help_text="Empty: the name in the file.",
    )
    bind_address = forms.GenericIPAddressField(
        label="Bind Address",
        required=False,
        help_text="Empty: the address in the file.",
    )

    def __init__(self, *args, into: Instance | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.into = into
        self.parsed: Any = None
        if into is not None:
            # An existing instance keeps its name and address.
            del self.fields["name"]
            del self.fields["bind_address"]

    def clean_document(self) -> Any:
        upload = self.cleaned_data["document"]
        if upload.size > backup.MAX_DOCUMENT_BYTES:
            raise forms.ValidationError(
                f"{upload.name} is larger than {MAX_MIB} MiB, the most an export writes."
            )
        upload.seek(0)
        raw = upload.read(backup.MAX_DOCUMENT_BYTES + 1)
        try:
            self.parsed = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_repeated_keys)
        except UnicodeDecodeError as error:
            raise forms.ValidationError("The file is not JSON: it is not UTF-8 text.") from error
        except json.JSONDecodeError as error:
            raise forms.ValidationError(
                f"The file is not JSON: {error.msg} (line {error.lineno}, column {error.colno})."
            ) from error
        except (ValueError, RecursionError) as error:
            raise forms.ValidationError(f"The file is not a backup: {error}") from error
        return upload


def _filename(instance: Instance) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", instance.name).strip("-") or "instance"
    return f"{stem}-{instance.pk}.json"


@sensitive_post_parameters("passphrase", "confirm")
@require_http_methods(["GET", "POST"])
def instance_export(request: HttpRequest, instance_id: str) -> HttpResponse:
    instance = get_object_or_404(Instance, pk=instance_id)
    form = ExportForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            document = backup.export_instance(instance, form.cleaned_data["passphrase"])
        except RuleViolation as problem:
            form.add_error(problem.field if problem.field in form.fields else None, str(problem))
        else:
            response = HttpResponse(backup.serialize(document), content_type="application/json")
            response["Content-Disposition"] = f'attachment; filename="{_filename(instance)}"'
            response["Cache-Control"] = "no-store"
            return response
    return render_dialog(
        request,
        "console/_instance_export.html",
        {"form": form, "instance": instance, "title": "Export Instance", "breadcrumbs": CRUMBS},
        status=422 if form.errors else 200,
    )


@sensitive_post_parameters("passphrase")
@require_http_methods(["GET", "POST"])
def instance_import(request: HttpRequest, instance_id: str | None = None) -> HttpResponse:
    into = get_object_or_404(Instance, pk=instance_id) if instance_id else None
    form = ImportForm(request.POST or None, request.FILES or None, into=into)
    if request.method == "POST" and form.is_valid():
        arguments: dict[str, Any] = {
            "document": form.parsed,
            "passphrase": form.cleaned_data["passphrase"],
        }
        if into is None:
            arguments["name"] = form.cleaned_data["name"]
            arguments["bind_address"] = form.cleaned_data["bind_address"] or ""
        else:
            arguments["instance_id"] = into.pk
        try:
            imported = backup.import_instance(**arguments)
        except backup.BackupInvalid as invalid:
            for problem in invalid.problems:
                where = problem["field"]
                if where == "passphrase":
                    form.add_error("passphrase", problem["message"])
                else:
                    form.add_error(
                        "document",
                        f"{where}: {problem['message']}" if where else problem["message"],
                    )
        except NotFound as gone:
            raise Http404(str(gone)) from gone
        except RuleViolation as refusal:
            form.add_error(None, str(refusal))
        else:
            instance = imported.instance
            next_step = (
                "their configuration is being pushed."
                if instance.nodes.exists()
                else "add a dataplane node to serve them."
            )
            messages.success(
                request,
                f"Imported {len(imported.listeners)} listener(s) into {instance.name} "
                f"({instance.id}); {next_step}",
            )
            return redirect_after_change(request, reverse("instance-listeners", args=[instance.pk]))
    title = f"Import into {into.name}" if into else "Import Instance"
    return render_dialog(
        request,
        "console/_instance_import.html",
        {"form": form, "into": into, "title": title, "breadcrumbs": CRUMBS},
        status=422 if form.errors else 200,
    )
