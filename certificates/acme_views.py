"""ACME pages: "Issue with ACME", an issuance's progress, "Renew Now"."""

from __future__ import annotations

import ipaddress
import re

from django import forms
from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme, urlencode
from django.views.decorators.http import require_http_methods, require_POST
from django_htmx.http import HttpResponseStopPolling

from certificates import renewal
from certificates.acme_models import LETS_ENCRYPT, LETS_ENCRYPT_STAGING, AcmeIssuance
from console.htmx import redirect_after_change, render_dialog
from console.models import Instance
from listeners import services

CRUMBS = [("Certificates", "certificate-list")]
DIRECTORIES = {"letsencrypt": LETS_ENCRYPT, "letsencrypt-staging": LETS_ENCRYPT_STAGING}
MAX_DOMAINS = 100
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


def clean_domain_names(text: str) -> list[str]:
    """Host names, one per line or comma separated; each kind of mistake says which name."""
    names: list[str] = []
    for raw in re.split(r"[\s,]+", text.strip()):
        if not raw:
            continue
        name = raw.lower().rstrip(".")
        if name.startswith("*."):
            raise forms.ValidationError(
                f"{raw}: wildcard names need the DNS-01 challenge, which this console does not "
                "answer; list the names instead."
            )
        try:
            ipaddress.ip_address(name)
        except ValueError:
            pass
        else:
            raise forms.ValidationError(f"{raw}: an IP address is not a domain name.")
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            raise forms.ValidationError(f"{raw}: not a valid domain name.") from None
        labels = name.split(".")
        if len(name) > 253 or len(labels) < 2 or not all(_LABEL.match(x) for x in labels):
            raise forms.ValidationError(f"{raw}: not a fully qualified domain name.")
        if name not in names:
            names.append(name)
    if not names:
        raise forms.ValidationError("Enter at least one domain name.")
    if len(names) > MAX_DOMAINS:
        raise forms.ValidationError(f"At most {MAX_DOMAINS} names per certificate.")
    return names


class AcmeIssueForm(forms.Form):
    name = forms.CharField(label="Certificate Name", max_length=128)
    domains = forms.CharField(
        label="Domain Names",
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text="One per line. The first becomes the certificate's primary domain.",
    )
    directory = forms.ChoiceField(
        label="Certificate Authority",
        choices=[
            ("letsencrypt", "Let's Encrypt"),
            ("letsencrypt-staging", "Let's Encrypt (staging, for tests)"),
            ("custom", "Other ACME CA (directory URL below)"),
        ],
    )
    directory_url = forms.URLField(
        label="ACME Directory URL",
        required=False,
        max_length=500,
        assume_scheme="https",
        help_text="Only for Other ACME CA.",
        widget=forms.URLInput(attrs={"class": "inline-input"}),
    )
    email = forms.EmailField(
        label="Contact Email",
        help_text="The CA's expiry notices go here.",
        widget=forms.EmailInput(attrs={"class": "inline-input"}),
    )
    challenge = forms.ChoiceField(label="Challenge", choices=AcmeIssuance.Challenge.choices)
    instance = forms.ModelChoiceField(
        label="Answered by Instance",
        queryset=Instance.objects.order_by("name"),
        help_text="Its dataplane answers the CA's challenge on the listener the challenge needs.",
    )
    key_algorithm = forms.ChoiceField(
        label="Key Algorithm", choices=AcmeIssuance.KeyAlgorithm.choices
    )
    agree = forms.BooleanField(label="I agree to the certificate authority's terms of service")

    def clean_domains(self) -> list[str]:
        return clean_domain_names(self.cleaned_data["domains"])

    def clean(self) -> dict:
        data = super().clean()
        directory = data.get("directory")
        if directory == "custom":
            url = data.get("directory_url")
            if not url:
                self.add_error("directory_url", "Enter the ACME directory URL of the CA.")
            elif not url.startswith("https://"):
                self.add_error("directory_url", "An ACME directory is served over HTTPS.")
            else:
                data["resolved_directory"] = url
        elif directory:
            data["resolved_directory"] = DIRECTORIES[directory]
        instance, challenge = data.get("instance"), data.get("challenge")
        if instance is not None and challenge:
            try:
                renewal.challenge_listener(instance, challenge)
            except renewal.IssuanceRefused as refused:
                self.add_error(refused.field, str(refused))
        return data


@require_http_methods(["GET", "POST"])
def acme_issue(request: HttpRequest) -> HttpResponse:
    # The listener wizard opens this dialog for its instance and wants its draft back after.
    next_url = request.GET.get("next", "")
    if not url_has_allowed_host_and_scheme(next_url, allowed_hosts={request.get_host()}):
        next_url = ""
    initial = {"instance": request.GET.get("instance")} if request.GET.get("instance") else {}
    form = AcmeIssueForm(request.POST or None, initial=initial)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            issuance = renewal.request_issuance(
                name=data["name"],
                domains=data["domains"],
                directory_url=data["resolved_directory"],
                email=data["email"],
                challenge=data["challenge"],
                instance=data["instance"],
                key_algorithm=data["key_algorithm"],
            )
        except services.RuleViolation as refused:
            form.add_error(getattr(refused, "field", None), str(refused))
        else:
            if next_url:
                messages.success(
                    request,
                    f"Certificate {issuance.name} is being issued: once the CA has validated "
                    "(usually within seconds) it can be selected as the Server Certificate.",
                )
                # The wizard's step follows this order (certificates/_acme_wizard.html).
                return redirect_after_change(
                    request, f"{next_url}?{urlencode({'acme': issuance.id})}"
                )
            messages.success(request, f"Certificate {issuance.name} requested from the CA.")
            return redirect_after_change(request, reverse("acme-issuance", args=[issuance.id]))
    action = reverse("acme-issue")
    if next_url:
        action += "?" + urlencode({"next": next_url})
    return render_dialog(
        request,
        "certificates/_acme_form.html",
        {
            "form": form,
            "title": "Issue with ACME",
            "action": action,
            "breadcrumbs": CRUMBS,
        },
        status=422 if form.errors else 200,
    )


def acme_issuance(request: HttpRequest, issuance_id: str) -> HttpResponse:
    issuance = get_object_or_404(AcmeIssuance.objects.select_related("instance"), pk=issuance_id)
    return render(
        request,
        "certificates/_acme_page.html",
        {"issuance": issuance, "title": issuance.name, "breadcrumbs": CRUMBS},
    )


def acme_status(request: HttpRequest, issuance_id: str) -> HttpResponse:
    """The progress panel, polled while an attempt is queued or running."""
    issuance = get_object_or_404(AcmeIssuance.objects.select_related("instance"), pk=issuance_id)
    # Polled from the wizard's SSL Certificate step: its compact line, whose link selects the
    # certificate in the wizard's draft once issued.
    wizard_url = request.GET.get("next", "")
    if wizard_url.startswith("/") and url_has_allowed_host_and_scheme(
        wizard_url, allowed_hosts={request.get_host()}
    ):
        response = render(
            request,
            "certificates/_acme_wizard.html",
            {"issuance": issuance, "wizard_url": wizard_url},
        )
    else:
        response = render(request, "certificates/_acme_panel.html", {"issuance": issuance})
    if request.htmx and not issuance.in_progress:
        # Finished: one last swap with the outcome, then the poll stops.
        return HttpResponseStopPolling(response.content)
    return response


@require_POST
def acme_renew(request: HttpRequest, issuance_id: str) -> HttpResponse:
    issuance = get_object_or_404(AcmeIssuance, pk=issuance_id)
    try:
        renewal.request_renewal(issuance_id=issuance.pk)
    except services.RuleViolation as refused:
        messages.error(request, str(refused))
    else:
        messages.success(request, f"Renewal of {issuance.name} started.")
    return redirect_after_change(request, issuance.get_absolute_url())


@require_POST
def acme_delete(request: HttpRequest, issuance_id: str) -> HttpResponse:
    issuance = get_object_or_404(AcmeIssuance, pk=issuance_id)
    try:
        renewal.delete_issuance(issuance_id=issuance.pk)
    except services.RuleViolation as refused:
        messages.error(request, str(refused))
        return redirect_after_change(request, issuance.get_absolute_url())
    messages.success(request, f"ACME certificate {issuance.name} deleted.")
    return redirect_after_change(request, reverse("certificate-list"))
