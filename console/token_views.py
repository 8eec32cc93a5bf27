"""The Tokens page: a user's personal API tokens (create, shown once; revoke)."""

from __future__ import annotations

from django import forms
from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_http_methods, require_POST

from console import tokens
from console.models import ApiToken
from console.roles import is_administrator


class TokenForm(forms.Form):
    name = forms.CharField(
        label="Token Name", max_length=64, help_text="What the token is for, e.g. terraform-ci."
    )
    role = forms.ChoiceField(
        label="Role",
        choices=ApiToken.Role.choices,
        initial=ApiToken.Role.VIEWER,
        help_text="A viewer token only reads; writes with it get 403.",
    )
    days = forms.TypedChoiceField(
        label="Expires After",
        choices=tokens.EXPIRY_CHOICES,
        coerce=int,
        initial=90,
    )

    def __init__(self, *args, administrator: bool, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if not administrator:  # a Viewer's token cannot do more than its user
            self.fields["role"].choices = [(ApiToken.Role.VIEWER, ApiToken.Role.VIEWER.label)]


@require_http_methods(["GET", "POST"])
def token_list(request: HttpRequest) -> HttpResponse:
    administrator = is_administrator(request.user)
    form = TokenForm(request.POST or None, administrator=administrator)
    issued = None
    status = 200
    if request.method == "POST":
        if form.is_valid():
            try:
                issued = tokens.issue_token(user=request.user, **form.cleaned_data)
            except PermissionError as refusal:
                form.add_error("role", str(refusal))
                status = 422
            else:
                status = 201
                form = TokenForm(administrator=administrator)
        else:
            status = 422
    response = render(
        request,
        "console/tokens.html",
        {
            "form": form,
            "issued": issued,
            "tokens": _with_state(ApiToken.objects.filter(user=request.user)),
            "title": "API Tokens",
        },
        status=status,
    )
    # The page that shows a new token must not be kept by the browser or a proxy.
    response["Cache-Control"] = "no-store"
    return response


def _with_state(queryset) -> list[ApiToken]:
    now = timezone.now()
    listed = list(queryset)
    for token in listed:
        if token.revoked_at:
            token.state = f"Revoked {token.revoked_at:%Y-%m-%d %H:%M}"
        else:
            token.state = "Active" if token.usable(now) else "Expired"
    return listed


@require_POST
def token_revoke(request: HttpRequest, token_id: int) -> HttpResponse:
    token = tokens.revoke_token(user=request.user, token_id=token_id)
    if token is not None:
        messages.success(request, f"Token {token.name} revoked.")
    return redirect("token-list")
