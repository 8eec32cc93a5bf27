"""The API object: routers, authentication and problem documents for every error."""

from __future__ import annotations

from django.core.exceptions import RequestDataTooBig
from django.http import Http404, HttpRequest, HttpResponse
from ninja import NinjaAPI
from ninja.errors import AuthenticationError, HttpError, ValidationError

from console.api import (
    acls,
    acme,
    audit,
    backup,
    certificates,
    errorpages,
    instances,
    listeners,
    rules,
    servergroups,
    tlspolicies,
)
from console.api.auth import (
    API_MAX_BODY_BYTES,
    API_MAX_CRL_BYTES,
    API_MAX_IMPORT_BYTES,
    ConsoleAuth,
)
from console.api.parser import BodyRefused, StrictParser
from console.api.problems import CONTENT_TYPE, ApiError, Problem, problem_response
from console.backup import MAX_DOCUMENT_BYTES

DESCRIPTION = f"""
Every operation of the Ferry console. Authenticate with a personal API token from the console's
API Tokens page (`Authorization: Bearer <token>`), or with a signed-in browser session (writes
then need the `X-CSRFToken` header). Viewer tokens only read.

Changes are asynchronous: a create or change answers at once with the listener `configuring` and
the instance `generation` that carries it; GET shows the live `status` and `last_error`.

Errors are RFC 9457 problem documents (`application/problem+json`) whose `errors` name each
field. Unknown fields are refused by name, and so are repeated keys, NaN and lone
surrogates in the JSON. Request bodies are limited to {API_MAX_BODY_BYTES}
bytes (413 beyond), except two that carry more than settings: an import
(`POST /instances/import`, `POST /instances/{{instance_id}}/import`) up to {API_MAX_IMPORT_BYTES}
bytes, room for any document an export writes (an export refuses to write one over
{MAX_DOCUMENT_BYTES} bytes), and a CRL upload up to {API_MAX_CRL_BYTES} bytes.
"""


class FerryApi(NinjaAPI):
    def get_openapi_schema(self, *, path_prefix=None, path_params=None):
        """Every operation also documents the answers the middleware and the request checks can
        give (401, 403, 413, 422), and every error is ``application/problem+json``."""
        schema = super().get_openapi_schema(path_prefix=path_prefix, path_params=path_params)
        problem = {"$ref": "#/components/schemas/Problem"}
        for methods in schema["paths"].values():
            for operation in methods.values():
                responses = operation.setdefault("responses", {})
                for status, text in COMMON_ERRORS.items():
                    if status not in responses and str(status) not in responses:
                        responses[status] = {"description": text}
                for status, response in responses.items():
                    if str(status).startswith("4"):
                        response["content"] = {CONTENT_TYPE: {"schema": problem}}
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components.setdefault(
            "Problem", Problem.model_json_schema(ref_template="#/components/schemas/{model}")
        )
        for name, definition in (
            Problem.model_json_schema(ref_template="#/components/schemas/{model}")
            .get("$defs", {})
            .items()
        ):
            components.setdefault(name, definition)
        components["Problem"].pop("$defs", None)
        return schema


COMMON_ERRORS = {
    401: "No credentials, or a token that is unknown, revoked or expired.",
    403: "A viewer (token or user) writing, or a session write without its CSRF token.",
    404: "No such object.",
    413: "The request body is over the limit.",
    422: "The request is not valid; ``errors`` names each field.",
}

api = FerryApi(
    title="Ferry Load Balancer API",
    version="1",
    description=DESCRIPTION,
    auth=ConsoleAuth(),
    parser=StrictParser(),
    urls_namespace="api",
    docs_url="/docs",
    openapi_url="/openapi.json",
)
for module in (
    # Before instances: POST /instances/import must not reach /instances/{instance_id}.
    backup,
    instances,
    listeners,
    rules,
    errorpages,
    servergroups,
    certificates,
    acme,
    tlspolicies,
    acls,
    audit,
):
    api.add_router("", module.router)


def _field_of(location: tuple | list) -> str | None:
    # ("body", "payload", "servers", 0, "port") -> "servers[0].port"
    parts = [p for p in location if p not in ("body", "payload", "query", "path")]
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or None


@api.exception_handler(ValidationError)
def invalid_request(request: HttpRequest, error: ValidationError) -> HttpResponse:
    errors = []
    for item in error.errors:
        field = _field_of(item.get("loc", ()))
        if item.get("type") == "extra_forbidden":
            message = f"Unknown field {field}."
        else:
            message = item.get("msg", "Invalid value.")
        errors.append({"field": field, "message": message})
    return problem_response(
        422, errors[0]["message"] if errors else "Invalid request.", errors=errors
    )


@api.exception_handler(ApiError)
def api_error(request: HttpRequest, error: ApiError) -> HttpResponse:
    return problem_response(error.status, error.detail, errors=error.errors)


@api.exception_handler(Http404)
def not_found(request: HttpRequest, error: Http404) -> HttpResponse:
    return problem_response(404, "No such object.")


@api.exception_handler(AuthenticationError)
def unauthenticated(request: HttpRequest, error: AuthenticationError) -> HttpResponse:
    return problem_response(401, "Authentication required.")


@api.exception_handler(HttpError)
def http_error(request: HttpRequest, error: HttpError) -> HttpResponse:
    if isinstance(error.__cause__, BodyRefused):
        # Ninja wraps every parser error in one message; the caller needs to know which rule.
        return problem_response(400, f"Cannot parse the request body: {error.__cause__}")
    return problem_response(error.status_code, str(error))


@api.exception_handler(RequestDataTooBig)
def too_big(request: HttpRequest, error: RequestDataTooBig) -> HttpResponse:
    # Django's own ceiling (DATA_UPLOAD_MAX_MEMORY_SIZE) when a body came without its length.
    return problem_response(413, f"The request body is larger than {API_MAX_BODY_BYTES} bytes.")
