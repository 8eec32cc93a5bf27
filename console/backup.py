"""Backup and restore: one instance as one JSON document, and the import of such a document.

The document
------------
``{"format": "ferry-instance-backup", "format_version": 1, "instance": {...}, "certificates":
[...], "tls_policies": [...], "acls": [...], "server_groups": [...], "listeners": [...],
"encryption": {...}}``. Objects refer to each other by name (a listener's ``server_group`` is the
name of an entry of ``server_groups``; ``tls_policy`` may also name a predefined policy), and a
listener's ``quic_listener`` by its position in ``listeners``. Names are unique per section in a
document: two exported objects of one kind with the same name get their console ID appended.

Model fields are written generically from ``_meta`` (so a field another change adds to one of
these models travels without a change here), except ``EXCLUDED`` below, each for its reason, the
certificate columns the upload's validation derives from the PEM (recomputed on import), and
fields the console keeps itself (``editable=False``, such as a summary of other rows). Foreign
keys become names (``REFERENCES``), a foreign key to the instance becomes "this instance", and a
foreign key this module does not know is left out. A certificate's revocation lists and ACME
issuance (``CERTIFICATE_CHILDREN``) travel inside its entry, field by field in the same way; an
imported CRL must also pass the CRL upload's validation against the imported CA (signature, through
its intermediates, and currency), and its stored details are read from the CRL itself.
Fields named ``*_token`` or ``*_encrypted`` hold secrets encrypted at rest by the keystore: they
are written decrypted and then encrypted again with the operator's passphrase (scrypt, then
AES-256-GCM; the salt and scrypt parameters are in ``encryption``) under the name without the
suffix, e.g. a certificate's ``private_key``. Nothing else secret is in a document; dataplane
nodes (where an instance runs, with their control tokens) are not exported.

The import
----------
``import_instance`` is the use case's one service function. It checks the document's shape, the
names and references, the passphrase and every certificate (the upload's validation) before it
writes anything; then, in one transaction, it builds the objects with the forms' rules (the same
forms the pages and the API use: port conflicts, quota, bandwidth, certificates against the TLS
policy, gRPC and slow-start rules...). Those rules read the rows being built, so they run as the
rows are written; every problem of every object is collected with its JSON path, and if there is
any the whole transaction is rolled back: an import that fails changes nothing and lists every
problem. On success the generation is bumped once, an audit record is written for the instance
(``@audited``) and for every object created, and the push is queued on commit.

Server groups, certificates and ACLs are always created anew (the copy shares nothing with the
original). A custom TLS policy is a value whose name is unique in a console: one of the same name
and settings is used as it is, one of the same name and other settings is a problem.
An export writes an ``instance.export`` audit record: the document carries the private keys.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import decimal
import json
import os
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
from django import forms
from django.apps import apps
from django.core.exceptions import ValidationError
from django.db import DataError, IntegrityError, models, transaction
from django.utils import timezone

from certificates import keystore, revocation, validation
from certificates.models import Certificate
from console.api.problems import form_errors
from console.audit import audited, record, snapshot
from console.models import Instance
from listeners import services
from listeners.forms import passive
from listeners.forms.acls import AccessControlListForm
from listeners.forms.errorpages import ErrorPageForm
from listeners.forms.listener import (
    CERTIFICATE,
    SETTINGS_FIELDS,
    CertificateStepForm,
    HealthCheckForm,
    ProtocolListenerForm,
    ServerGroupStepForm,
    format_tags,
)
from listeners.forms.rules import ForwardingRuleForm
from listeners.forms.servergroups import BackendServerFormSet, ServerGroupForm
from listeners.forms.tlspolicies import TlsPolicyForm
from listeners.models import (
    AccessControlList,
    AclEntry,
    BackendServer,
    ErrorPage,
    ForwardingRule,
    HealthCheck,
    Listener,
    ServerGroup,
    TlsPolicy,
)
from listeners.rules import compatible_backend_protocols

FORMAT = "ferry-instance-backup"
FORMAT_VERSION = 1
# A document is read whole into memory, so it has a limit, and the export refuses to write a
# document over it: whatever is exported can be imported. 32 MiB holds the largest realistic
# instance: its 100 listeners each with four 64 KiB error pages of HTML (about 26 MiB as JSON).
# The API refuses larger import bodies before reading them (console/api/auth.py).
MAX_DOCUMENT_BYTES = 32 * 1024 * 1024
MIN_PASSPHRASE = 12
MAX_PASSPHRASE = 1024
DEFAULT_TLS_POLICY = "tls_cipher_policy_1_0"

# Fields left out of every document, and why.
EXCLUDED: dict[str, str] = {
    "id": "identifiers are issued by the console that imports",
    "created_at": "when the row was written, not what it configures",
    "updated_at": "when the row was written, not what it configures",
    "generation": "the import starts a new generation",
    "status": "what the nodes observed, not what the operator chose",
    "last_error": "what the nodes observed",
    "configuring_since": "what the nodes observed",
    "predefined": "predefined TLS policies are not exported; listeners name them",
    "position": "a forwarding rule's position is its place in the list",
}
# Certificate columns that the upload's validation derives from the PEM: recomputed on import.
DERIVED_CERTIFICATE_FIELDS = frozenset(
    {
        "subject",
        "issuer",
        "common_name",
        "primary_domain",
        "sans",
        "serial",
        "fingerprint_sha256",
        "key_algorithm",
        "key_size",
        "key_type",
        "not_before",
        "not_after",
        "chain_summary",
    }
)
SECRET_SUFFIXES = ("_token", "_encrypted")
# Foreign keys written as the name of the object they point to: field -> document section.
REFERENCES: dict[tuple[type[models.Model], str], str] = {
    (Listener, "server_group"): "server_groups",
    (Listener, "acl"): "acls",
    (Listener, "tls_policy"): "tls_policies",
    (Listener, "default_certificate"): "certificates",
    (Listener, "ca_certificate"): "certificates",
    (Listener, "additional_certificates"): "certificates",
    (ServerGroup, "backend_ca_certificate"): "certificates",
    (ForwardingRule, "server_group"): "server_groups",
}
# Rows that hang off a certificate and configure it (its revocation lists, its ACME issuance),
# carried field by field like the rest; a model this console does not have is skipped. Their
# history (ACME attempts, expiry alerts) is not configuration and is not carried.
CERTIFICATE_CHILDREN = ("certificates.CertificateRevocationList", "certificates.AcmeIssuance")
CRL_MODEL = "certificates.CertificateRevocationList"
# Where a CRL's validation problem is in the document: the CRL itself, or its issuer chain.
CRL_FIELDS = {revocation.CRL: "der", revocation.ISSUER_CHAIN: "issuer_chain_pem"}
MAX_CHILDREN = 50
THIS_INSTANCE = "this instance"
SECTIONS = ("certificates", "tls_policies", "acls", "server_groups", "listeners")
SECTION_LIMITS = {
    "certificates": 500,
    "tls_policies": 100,
    "acls": 200,
    "server_groups": 500,
    "listeners": 100,
}
NESTED_LIMITS = {
    "servers": 500,
    "entries": 1000,
    "forwarding_rules": 100,
    "error_pages": len(ErrorPage.Status),
}
TOP_LEVEL = frozenset(
    {"format", "format_version", "exported_at", "source", "encryption", "instance", *SECTIONS}
)
# scrypt: 2**15 x 8 x 128 bytes = 32 MiB and about 0.1 s per derivation. A document may name
# other parameters, within bounds, so a crafted one cannot make the import use gigabytes.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**15, 8, 1
SCRYPT_N_ALLOWED = (2**14, 2**15, 2**16)
SALT_BYTES = 16
AAD = b"ferry-instance-backup/1"
PASSPHRASE_CHECK = b"ferry-instance-backup passphrase check"


# -- errors ------------------------------------------------------------------------------------
class BackupInvalid(ValueError):
    """The document cannot be imported; ``problems``: every one, each {field, message}."""

    def __init__(self, problems: list[dict[str, str | None]]) -> None:
        super().__init__(problems[0]["message"] if problems else "The document is not valid.")
        self.problems = problems


class TargetNotEmpty(services.InUse):
    """Import goes into a new instance or an empty one, never over listeners."""

    def __init__(self, message: str) -> None:
        super().__init__(message, blockers=[])


# -- the passphrase ------------------------------------------------------------------------------
def passphrase_problem(passphrase: str | None, *, exporting: bool) -> str | None:
    if not passphrase:
        return "Enter the passphrase that encrypts the private keys in the document."
    if len(passphrase) > MAX_PASSPHRASE:
        return f"The passphrase is longer than {MAX_PASSPHRASE} characters."
    if exporting and len(passphrase) < MIN_PASSPHRASE:
        return f"Use a passphrase of at least {MIN_PASSPHRASE} characters."
    return None


def _mib(size: int) -> str:
    return f"{size / (1024 * 1024):.1f} MiB"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: Any) -> bytes:
    if not isinstance(text, str):
        raise ValueError("not base64 text")
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as error:
        raise ValueError("not base64 text") from error


class _Sealer:
    """AES-256-GCM under a key derived from the passphrase with scrypt."""

    def __init__(self, passphrase: str, salt: bytes, n: int, r: int, p: int) -> None:
        key = Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(passphrase.encode())
        self.aead = AESGCM(key)
        self.parameters = {
            "kdf": "scrypt",
            "salt": _b64(salt),
            "n": n,
            "r": r,
            "p": p,
            "cipher": "AES-256-GCM",
        }

    def seal(self, plaintext: bytes) -> str:
        nonce = os.urandom(12)
        return _b64(nonce + self.aead.encrypt(nonce, plaintext, AAD))

    def open(self, sealed: Any) -> bytes:
        """Raises ValueError for anything that is not a ciphertext of this key."""
        data = _unb64(sealed)
        if len(data) < 12 + 16:
            raise ValueError("too short to be a ciphertext")
        try:
            return self.aead.decrypt(data[:12], data[12:], AAD)
        except InvalidTag as error:
            raise ValueError("does not decrypt") from error


# -- which fields a document holds -------------------------------------------------------------
def _is_secret(model_field: models.Field) -> bool:
    return model_field.name.endswith(SECRET_SUFFIXES)


def _secret_key(model_field: models.Field) -> str:
    for suffix in SECRET_SUFFIXES:
        if model_field.name.endswith(suffix):
            return model_field.name[: -len(suffix)]
    return model_field.name


def _exported_fields(model: type[models.Model], parent: str | None = None) -> list[models.Field]:
    """The model's fields that a document carries (concrete and many-to-many)."""
    found = []
    for model_field in [*model._meta.concrete_fields, *model._meta.many_to_many]:
        name = model_field.name
        if model_field.primary_key or name == parent:
            continue
        # An error page's status is which page it is (502...), not what the nodes observed.
        if name in EXCLUDED and not (model is ErrorPage and name == "status"):
            continue
        if model is Certificate and name in DERIVED_CERTIFICATE_FIELDS:
            continue
        binary = isinstance(model_field, models.BinaryField)  # never editable in a form
        if not model_field.editable and not _is_secret(model_field) and not binary:
            continue  # kept by the console itself (a summary of other rows), not chosen
        if model_field.is_relation and (model, name) not in REFERENCES:
            if not (model is Listener and name == "quic_listener") and not _to_instance(
                model_field
            ):
                continue  # a relation this module cannot express by name
        found.append(model_field)
    return found


def _to_instance(model_field: models.Field) -> bool:
    """A foreign key to the instance (an ACME issuance's): written as "this instance"."""
    return model_field.many_to_one and model_field.related_model is Instance


def certificate_children() -> list[tuple[str, type[models.Model], models.Field]]:
    """(document key, model, foreign key to the certificate) of each ``CERTIFICATE_CHILDREN``
    model this console has."""
    found = []
    for label in CERTIFICATE_CHILDREN:
        try:
            model = apps.get_model(label)
        except LookupError:
            continue
        parent = next(
            (
                f
                for f in model._meta.concrete_fields
                if f.is_relation and f.related_model is Certificate
            ),
            None,
        )
        if parent is not None:
            key = parent.remote_field.related_name or model._meta.model_name
            found.append((key, model, parent))
    return found


def _document_key(model_field: models.Field) -> str:
    return _secret_key(model_field) if _is_secret(model_field) else model_field.name


def _plain(value: Any) -> Any:
    if isinstance(value, datetime.datetime | datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, decimal.Decimal | uuid.UUID):
        return str(value)
    if isinstance(value, bytes | memoryview):
        return _b64(bytes(value))
    return value


# -- export ------------------------------------------------------------------------------------
def _unique_names(rows: Iterable[models.Model]) -> dict[Any, str]:
    """pk -> the name used in the document: the object's name, with its ID if it is shared."""
    rows = list(rows)
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.name] = counts.get(row.name, 0) + 1
    return {row.pk: row.name if counts[row.name] == 1 else f"{row.name} ({row.pk})" for row in rows}


@dataclass
class _Exporter:
    sealer: _Sealer
    names: dict[str, dict[Any, str]] = field(default_factory=dict)
    listener_positions: dict[str, int] = field(default_factory=dict)
    instance_id: str = ""

    def fields(self, row: models.Model, parent: str | None = None) -> dict[str, Any]:
        model = type(row)
        out: dict[str, Any] = {}
        if hasattr(row, "name") and model in (
            Certificate,
            TlsPolicy,
            AccessControlList,
            ServerGroup,
        ):
            out["name"] = self.names[_section_of(model)][row.pk]
        for model_field in _exported_fields(model, parent):
            key = _document_key(model_field)
            if key in out:
                continue
            if model_field.many_to_many:
                section = REFERENCES[(model, model_field.name)]
                out[key] = [
                    self.names[section][pk]
                    for pk in getattr(row, model_field.name)
                    .order_by("pk")
                    .values_list("pk", flat=True)
                ]
            elif model_field.is_relation:
                pk = getattr(row, model_field.attname)
                if model is Listener and model_field.name == "quic_listener":
                    out[key] = self.listener_positions.get(pk)
                elif _to_instance(model_field):
                    out[key] = THIS_INSTANCE if pk == self.instance_id else None
                else:
                    section = REFERENCES[(model, model_field.name)]
                    out[key] = None if pk is None else self.names[section][pk]
            elif _is_secret(model_field):
                value = getattr(row, model_field.attname)
                out[key] = (
                    self.sealer.seal(keystore.decrypt_private_key(value).encode()) if value else ""
                )
            else:
                out[key] = _plain(getattr(row, model_field.attname))
        return out


def _section_of(model: type[models.Model]) -> str:
    return {
        Certificate: "certificates",
        TlsPolicy: "tls_policies",
        AccessControlList: "acls",
        ServerGroup: "server_groups",
    }[model]


def serialize(document: dict[str, Any]) -> bytes:
    """The document as the console and the API send it: indented UTF-8 JSON.

    UTF-8 rather than ``\\u`` escapes keeps a page of non-ASCII text near its own size (an
    error page refuses control characters, so only quotes, backslashes and line breaks grow).
    """
    return json.dumps(document, indent=2, ensure_ascii=False).encode()


def export_instance(instance: Instance, passphrase: str) -> dict[str, Any]:
    """The instance and everything its listeners use, as one JSON-ready document.

    Raises ``RuleViolation`` (field ``passphrase``) for a missing or short passphrase: keys are
    only ever exported encrypted, and a document without them could not restore HTTPS listeners.
    Raises ``RuleViolation`` (no field) if the document would be over ``MAX_DOCUMENT_BYTES``: a
    backup that the import would refuse is worse than none.
    Writes an ``instance.export`` audit record: the document carries the private keys.
    """
    problem = passphrase_problem(passphrase, exporting=True)
    if problem:
        raise services.RuleViolation(problem, field="passphrase")
    listeners = list(
        Listener.objects.filter(instance=instance)
        .select_related("server_group", "acl", "tls_policy")
        .prefetch_related("additional_certificates", "rules", "error_pages")
        .order_by("port", "protocol")
    )
    groups: dict[str, ServerGroup] = {}
    certificate_ids: set[str] = set()
    policies: dict[str, TlsPolicy] = {}
    acls: dict[str, AccessControlList] = {}
    for listener in listeners:
        groups[listener.server_group_id] = listener.server_group
        for rule in listener.rules.all():
            if rule.server_group_id:
                groups.setdefault(rule.server_group_id, rule.server_group)
        certificate_ids.update(
            pk for pk in (listener.default_certificate_id, listener.ca_certificate_id) if pk
        )
        certificate_ids.update(c.pk for c in listener.additional_certificates.all())
        if listener.tls_policy is not None and not listener.tls_policy.predefined:
            policies[listener.tls_policy_id] = listener.tls_policy
        if listener.acl is not None:
            acls[listener.acl_id] = listener.acl
    certificate_ids.update(
        g.backend_ca_certificate_id for g in groups.values() if g.backend_ca_certificate_id
    )
    certificates = list(Certificate.objects.filter(pk__in=certificate_ids).order_by("name", "pk"))
    group_rows = sorted(groups.values(), key=lambda g: (g.name, g.pk))
    policy_rows = sorted(policies.values(), key=lambda p: (p.name, p.pk))
    acl_rows = sorted(acls.values(), key=lambda a: (a.name, a.pk))

    sealer = _Sealer(passphrase, os.urandom(SALT_BYTES), SCRYPT_N, SCRYPT_R, SCRYPT_P)
    exporter = _Exporter(sealer, instance_id=instance.pk)
    exporter.names = {
        "certificates": _unique_names(certificates),
        "tls_policies": {
            **{p.pk: p.name for p in TlsPolicy.objects.filter(predefined=True)},
            **_unique_names(policy_rows),
        },
        "acls": _unique_names(acl_rows),
        "server_groups": _unique_names(group_rows),
    }
    exporter.listener_positions = {listener.pk: i for i, listener in enumerate(listeners)}
    try:
        exported_certificates = [_export_certificate(exporter, c) for c in certificates]
    except keystore.KeystoreError as error:
        raise services.RuleViolation(str(error)) from error

    document = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "exported_at": timezone.now().isoformat(),
        "source": {"instance_id": instance.pk, "generation": instance.generation},
        "encryption": {**sealer.parameters, "check": sealer.seal(PASSPHRASE_CHECK)},
        "instance": exporter.fields(instance),
        "certificates": exported_certificates,
        "tls_policies": [exporter.fields(p) for p in policy_rows],
        "acls": [
            {
                **exporter.fields(acl),
                "entries": [exporter.fields(e, "acl") for e in acl.entries.order_by("pk")],
            }
            for acl in acl_rows
        ],
        "server_groups": [_export_group(exporter, g) for g in group_rows],
        "listeners": [
            {
                **exporter.fields(listener, "instance"),
                "forwarding_rules": [
                    exporter.fields(rule, "listener")
                    for rule in listener.rules.order_by("position", "pk")
                ],
                "error_pages": [
                    exporter.fields(page, "listener") for page in listener.error_pages.all()
                ],
            }
            for listener in listeners
        ],
    }
    size = len(serialize(document))
    if size > MAX_DOCUMENT_BYTES:
        raise services.RuleViolation(
            f"The export of {instance.name} would be {_mib(size)}, over the "
            f"{_mib(MAX_DOCUMENT_BYTES)} an import accepts; remove large error pages or split its "
            "listeners across instances."
        )
    record(
        "instance.export",
        instance,
        {},
        {"private_keys": sorted(c.name for c in certificates if c.private_key_token)},
    )
    return document


def _export_certificate(exporter: _Exporter, certificate: Certificate) -> dict[str, Any]:
    out = exporter.fields(certificate)
    for key, model, parent in certificate_children():
        rows = model.objects.filter(**{parent.name: certificate}).order_by("pk")
        out[key] = [exporter.fields(row, parent.name) for row in rows]
    return out


def _export_group(exporter: _Exporter, group: ServerGroup) -> dict[str, Any]:
    check = HealthCheck.objects.filter(group=group).first()
    return {
        **exporter.fields(group),
        "servers": [exporter.fields(s, "group") for s in group.servers.order_by("pk")],
        "health_check": exporter.fields(check, "group") if check is not None else None,
    }


# -- import --------------------------------------------------------------------------------------
@dataclass
class Imported:
    """What an import created."""

    instance: Instance
    listeners: list[Listener] = field(default_factory=list)
    server_groups: list[ServerGroup] = field(default_factory=list)
    certificates: list[Certificate] = field(default_factory=list)
    tls_policies: list[TlsPolicy] = field(default_factory=list)
    acls: list[AccessControlList] = field(default_factory=list)


# What the forms check for each model; the model's other exported fields are checked by their
# model field (type, choices, length, validators) and set as they are.
FORM_FIELDS: dict[type[models.Model], frozenset[str]] = {
    Instance: frozenset({"name", "edition", "bind_address", "listener_quota", "bandwidth_mbit"}),
    Certificate: frozenset({"certificate_pem", "chain_pem", "private_key_token"}),
    TlsPolicy: frozenset(TlsPolicyForm.Meta.fields),
    AccessControlList: frozenset({"name", "description"}),
    AclEntry: frozenset({"cidr", "description"}),
    ServerGroup: frozenset(ServerGroupForm.Meta.fields),
    BackendServer: frozenset({"address", "port", "weight", "description"}),
    HealthCheck: frozenset(HealthCheckForm.Meta.fields),
    Listener: frozenset(
        {
            "name",
            "description",
            "tags",
            "protocol",
            "port",
            "server_group",
            "desired_state",
            "default_certificate",
            "additional_certificates",
            "tls_policy",
            "mutual_authentication",
            "ca_certificate",
            *SETTINGS_FIELDS,
        }
    ),
    ForwardingRule: frozenset(services.RULE_FIELDS),
    ErrorPage: frozenset({"content_type", "body"}),
}
NESTED = {
    AccessControlList: {"entries"},
    ServerGroup: {"servers", "health_check"},
    Listener: {"forwarding_rules", "error_pages"},
}
_JSON_TYPES: list[tuple[tuple[type[models.Field], ...], tuple[type, ...], str]] = [
    ((models.BooleanField,), (bool,), "true or false"),
    ((models.IntegerField, models.BigIntegerField), (int,), "a whole number"),
    ((models.FloatField, models.DecimalField), (int, float, str), "a number"),
    ((models.CharField, models.TextField, models.GenericIPAddressField), (str,), "text"),
    ((models.BinaryField,), (str,), "base64 text"),
]


def _type_problem(model_field: models.Field, value: Any) -> str | None:
    """A JSON value of the wrong type for the field, said plainly (the forms would coerce it)."""
    if value is None:
        return None if model_field.null or model_field.is_relation else "may not be null"
    if isinstance(model_field, models.JSONField):
        return None
    if model_field.many_to_many:
        ok = isinstance(value, list) and all(isinstance(item, str) for item in value)
        return None if ok else "must be a list of names"
    if model_field.is_relation:
        return None  # checked as a reference
    for kinds, types, label in _JSON_TYPES:
        if isinstance(model_field, kinds):
            if isinstance(value, bool) and bool not in types:
                return f"must be {label}"
            return None if isinstance(value, types) else f"must be {label}"
    return None


def _same(a: Any, b: Any) -> bool:
    """Equal values; lists of suites in any order (the form stores them in canonical order)."""
    if isinstance(a, list) and isinstance(b, list):
        return sorted(map(str, a)) == sorted(map(str, b))
    return a == b


def _messages(error: ValidationError) -> list[str]:
    return [str(message) for message in error.messages]


class _Import:
    """One import: the problems found so far, and the rows written so far."""

    def __init__(self, document: Any, passphrase: str) -> None:
        self.document = document
        self.passphrase = passphrase
        self.problems: list[dict[str, str | None]] = []
        self.sealer: _Sealer | None = None
        self.passphrase_ok = False
        # section -> document name -> index; and the rows built, by section and index (None:
        # that object has problems, so what refers to it is not checked against it again).
        self.indexes: dict[str, dict[str, int]] = {section: {} for section in SECTIONS}
        self.rows: dict[str, dict[int, Any]] = {section: {} for section in SECTIONS}
        self.validated_certificates: dict[int, Any] = {}
        self.created: list[models.Model] = []
        self.read_values: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
        self.instance_id = ""
        # The sections that are lists within their limits; the others are listed as problems.
        self.sections: dict[str, list] = {section: [] for section in SECTIONS}

    def problem(self, path: str | None, message: str) -> None:
        self.problems.append({"field": path, "message": str(message)})

    def form_problems(
        self,
        form: forms.BaseForm | forms.BaseFormSet,
        at: str,
        *,
        rename: dict[str, str] | None = None,
        skip: Iterable[str] = (),
    ) -> bool:
        """Record the form's errors under ``at``; True if it had none."""
        found = form_errors(form, rename, at=at)
        skipped = {f"{at}.{name}" for name in skip}
        for item in found:
            if item["field"] not in skipped:
                self.problem(item["field"], item["message"])
        return not found

    # -- reading: shape, names, references, the passphrase, the certificates -------------------
    def read(self) -> None:
        document = self.document
        if not isinstance(document, dict):
            self.problem(None, "The document must be a JSON object.")
            return
        if document.get("format") != FORMAT:
            self.problem("format", f'This is not a Ferry instance backup (format "{FORMAT}").')
            return
        version = document.get("format_version")
        if version != FORMAT_VERSION:
            self.problem(
                "format_version",
                f"Format version {version!r} is not supported; this console reads version "
                f"{FORMAT_VERSION}.",
            )
            return
        for key in sorted(set(document) - TOP_LEVEL, key=str):
            self.problem(str(key), f"Unknown field {key}.")
        if not isinstance(document.get("instance"), dict):
            self.problem("instance", "The instance's settings must be a JSON object.")
        for section in SECTIONS:
            items = document.get(section, [])
            if not isinstance(items, list):
                self.problem(section, "Must be a list.")
                continue
            if len(items) > SECTION_LIMITS[section]:
                self.problem(section, f"At most {SECTION_LIMITS[section]} entries.")
                continue
            self.sections[section] = items
            self._read_names(section, items)
        self._read_encryption()
        self._read_references()

    def _read_names(self, section: str, items: list) -> None:
        for index, item in enumerate(items):
            at = f"{section}[{index}]"
            if not isinstance(item, dict):
                self.problem(at, "Must be a JSON object.")
                continue
            if section == "listeners":
                continue  # referred to by position; their names may repeat
            name = item.get("name")
            if not isinstance(name, str) or not name.strip():
                self.problem(f"{at}.name", "Give a name: other objects refer to it.")
                continue
            first = self.indexes[section].get(name)
            if first is not None:
                self.problem(
                    f"{at}.name",
                    f"{name} is also the name of {section}[{first}]; names are unique in a "
                    "document, as references use them.",
                )
                continue
            self.indexes[section][name] = index

    def _items(self, section: str) -> list[tuple[int, str, dict]]:
        return [
            (index, f"{section}[{index}]", item)
            for index, item in enumerate(self.sections[section])
            if isinstance(item, dict)
        ]

    def _read_encryption(self) -> None:
        secrets_present = any(
            item.get(_document_key(f))
            for _, _, item in self._items("certificates")
            for f in _exported_fields(Certificate)
            if _is_secret(f)
        )
        parameters = self.document.get("encryption")
        if parameters is None and not secrets_present:
            return
        if not isinstance(parameters, dict):
            self.problem("encryption", "The encryption parameters must be a JSON object.")
            return
        try:
            if parameters.get("kdf") != "scrypt" or parameters.get("cipher") != "AES-256-GCM":
                raise ValueError("encryption: only scrypt with AES-256-GCM is read")
            try:
                salt = _unb64(parameters.get("salt"))
            except ValueError:
                raise ValueError("encryption.salt: must be base64 text") from None
            n, r, p = parameters.get("n"), parameters.get("r"), parameters.get("p")
            if not 16 <= len(salt) <= 64:
                raise ValueError("encryption.salt: 16 to 64 bytes")
            whole = all(type(value) is int for value in (n, r, p))
            if not whole or n not in SCRYPT_N_ALLOWED or r != SCRYPT_R or p != SCRYPT_P:
                raise ValueError(
                    f"encryption: scrypt n must be one of {SCRYPT_N_ALLOWED}, r {SCRYPT_R}, "
                    f"p {SCRYPT_P}"
                )
        except ValueError as error:
            path, _, message = str(error).partition(": ")
            self.problem(path if message else "encryption", message or str(error))
            return
        if passphrase_problem(self.passphrase, exporting=False):
            self.problem("passphrase", passphrase_problem(self.passphrase, exporting=False))
            return
        self.sealer = _Sealer(self.passphrase, salt, n, r, p)
        try:
            self.passphrase_ok = self.sealer.open(parameters.get("check")) == PASSPHRASE_CHECK
        except ValueError:
            self.passphrase_ok = False
        if not self.passphrase_ok:
            self.problem(
                "passphrase",
                "This passphrase does not decrypt the document's private keys: enter the "
                "passphrase given when it was exported.",
            )

    def _read_references(self) -> None:
        predefined = set(TlsPolicy.objects.filter(predefined=True).values_list("name", flat=True))
        for section in ("listeners", "server_groups"):
            model = Listener if section == "listeners" else ServerGroup
            for index, at, item in self._items(section):
                self._check_refs(model, item, at, predefined)
                if section == "listeners":
                    rules = item.get("forwarding_rules", [])
                    if isinstance(rules, list):
                        for r_index, rule in enumerate(rules):
                            if isinstance(rule, dict):
                                self._check_refs(
                                    ForwardingRule, rule, f"{at}.forwarding_rules[{r_index}]", set()
                                )
                    quic = item.get("quic_listener")
                    listeners = self.sections["listeners"]
                    if quic is not None and (
                        not isinstance(quic, int)
                        or isinstance(quic, bool)
                        or not 0 <= quic < len(listeners)
                        or quic == index
                    ):
                        self.problem(
                            f"{at}.quic_listener",
                            "Give the position of a QUIC listener in listeners, or null.",
                        )
                    elif quic is not None and (
                        not isinstance(listeners[quic], dict)
                        or listeners[quic].get("protocol") != Listener.Protocol.QUIC
                    ):
                        self.problem(
                            f"{at}.quic_listener", f"listeners[{quic}] is not a QUIC listener."
                        )

    def _check_refs(self, model, item: dict, at: str, predefined: set[str]) -> None:
        for (ref_model, name), section in REFERENCES.items():
            if ref_model is not model or item.get(name) is None:
                continue
            values = item[name] if isinstance(item[name], list) else [item[name]]
            for value in values:
                if not isinstance(value, str):
                    self.problem(f"{at}.{name}", "Give the name of an object of the document.")
                elif value not in self.indexes[section] and not (
                    section == "tls_policies" and value in predefined
                ):
                    self.problem(f"{at}.{name}", f"{value} is not in {section} of the document.")

    def ref(self, section: str, value: Any) -> tuple[Any, bool]:
        """(the row built for a reference, or None; whether the reference failed)."""
        if value is None:
            return None, False
        if not isinstance(value, str):
            return None, True
        if section == "tls_policies" and value not in self.indexes[section]:
            row = TlsPolicy.objects.filter(predefined=True, name=value).first()
            return row, row is None
        index = self.indexes[section].get(value)
        row = self.rows[section].get(index) if index is not None else None
        return row, row is None

    # -- values of one object ---------------------------------------------------------------
    def values(
        self, model: type[models.Model], item: dict, at: str, parent: str | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """(the object's document values by field name, its extra fields cleaned): unknown
        keys and values of the wrong JSON type are recorded as problems and left out."""
        if at in self.read_values:
            return self.read_values[at]
        self.read_values[at] = self._values(model, item, at, parent)
        return self.read_values[at]

    def _values(
        self, model: type[models.Model], item: dict, at: str, parent: str | None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        fields = {_document_key(f): f for f in _exported_fields(model, parent)}
        known = set(fields) | NESTED.get(model, set())
        if model is Certificate:
            known |= {key for key, _, _ in certificate_children()}
        for key in item:
            if key not in known:
                self.problem(f"{at}.{key}", f"Unknown field {key}.")
        values, extra = {}, {}
        for key, model_field in fields.items():
            if key not in item:
                continue
            value = item[key]
            problem = None if _is_secret(model_field) else _type_problem(model_field, value)
            if problem:
                self.problem(f"{at}.{key}", f"{key} {problem}.")
                continue
            if isinstance(model_field, models.BinaryField) and value is not None:
                try:
                    value = _unb64(value)
                except ValueError:
                    self.problem(f"{at}.{key}", f"{key} must be base64 text.")
                    continue
            values[model_field.name] = value
            if model_field.name in FORM_FIELDS.get(model, ()) or model_field.is_relation:
                continue
            if _is_secret(model_field):
                continue
            try:
                extra[model_field.attname] = model_field.clean(value, None)
            except ValidationError as error:
                for message in _messages(error):
                    self.problem(f"{at}.{key}", message)
        return values, extra

    def open_secret(self, value: Any, at: str) -> str | None:
        if value in (None, ""):
            return ""
        if self.sealer is None or not self.passphrase_ok:
            return None  # the passphrase problem is already listed
        try:
            return self.sealer.open(value).decode()
        except (ValueError, UnicodeDecodeError):
            self.problem(at, "Does not decrypt with this passphrase: the document was altered.")
            return None

    # -- certificates (pure: the upload's validation) ------------------------------------------
    def check_certificates(self) -> None:
        secret_fields = [f for f in _exported_fields(Certificate) if _is_secret(f)]
        for index, at, item in self._items("certificates"):
            values, _ = self.values(Certificate, item, at)
            secrets = {
                f.name: self.open_secret(item.get(_document_key(f)), f"{at}.{_document_key(f)}")
                for f in secret_fields
            }
            kind = values.get("kind")
            if "kind" not in item:
                self.problem(f"{at}.kind", "Give the kind: server or ca.")
            if kind not in Certificate.Kind.values:
                continue  # an unknown kind is listed by values()
            pem, chain = values.get("certificate_pem", ""), values.get("chain_pem", "")
            key = secrets.get("private_key_token")
            rename = {
                "certificate": "certificate_pem",
                "chain": "chain_pem",
                "private_key": "private_key",
            }
            try:
                if kind == Certificate.Kind.SERVER:
                    if key is None:
                        continue  # cannot check without the key; its problem is listed
                    result = validation.validate_server_certificate(pem, key, chain or None)
                else:
                    for name in ("chain_pem", "private_key"):
                        if item.get(name):
                            self.problem(f"{at}.{name}", f"A CA certificate has no {name}.")
                    result = validation.validate_ca_certificate(pem)
            except validation.CertificateError as error:
                self.problem(f"{at}.{rename.get(error.field, error.field)}", error.message)
                continue
            self.validated_certificates[index] = (result, secrets)

    # -- writing, with the forms' rules ----------------------------------------------------------
    def build(self, instance: Instance, imported: Imported) -> None:
        self.instance_id = instance.pk
        for index, at, item in self._items("certificates"):
            certificate = self.guarded(at, self._certificate, index, item, at)
            if certificate is not None:
                self.rows["certificates"][index] = certificate
                imported.certificates.append(certificate)

        for index, at, item in self._items("tls_policies"):
            policy = self.guarded(at, self._tls_policy, item, at)
            if policy is not None:
                self.rows["tls_policies"][index] = policy
                imported.tls_policies.append(policy)

        for index, at, item in self._items("acls"):
            acl = self.guarded(at, self._acl, item, at)
            if acl is not None:
                self.rows["acls"][index] = acl
                imported.acls.append(acl)

        for index, at, item in self._items("server_groups"):
            group = self.guarded(at, self._server_group, item, at)
            if group is not None:
                self.rows["server_groups"][index] = group
                imported.server_groups.append(group)

        # QUIC listeners first: an HTTPS listener's QUIC upgrade names one of them.
        listeners = sorted(
            self._items("listeners"), key=lambda entry: entry[2].get("protocol") != "quic"
        )
        for index, at, item in listeners:
            listener = self.guarded(at, self._listener, instance, index, item, at)
            if listener is not None:
                self.rows["listeners"][index] = listener
                imported.listeners.append(listener)
        imported.listeners.sort(key=lambda listener: (listener.port, listener.protocol))

    def _certificate(self, index: int, item: dict, at: str) -> Certificate | None:
        values, extra = self.values(Certificate, item, at)
        checked = self.validated_certificates.get(index)
        if checked is None or "name" not in extra or "kind" not in extra:
            return None  # its problems are listed
        result, secrets = checked
        certificate = Certificate(name=values["name"], kind=values["kind"])
        certificate.apply_validated(result)
        for name, plaintext in secrets.items():
            if name != "private_key_token" and plaintext:
                setattr(certificate, name, keystore.encrypt_private_key(plaintext))
        for attname, value in extra.items():
            setattr(certificate, attname, value)
        certificate.save()
        for key, model, parent in certificate_children():
            if not self._children(certificate, item.get(key, []), f"{at}.{key}", model, parent):
                return None
        return certificate

    def _children(
        self, certificate: Certificate, items: Any, at: str, model, parent: models.Field
    ) -> bool:
        if not isinstance(items, list) or len(items) > MAX_CHILDREN:
            self.problem(at, f"Must be a list of at most {MAX_CHILDREN} entries.")
            return False
        ok = True
        for index, item in enumerate(items):
            c_at = f"{at}[{index}]"
            if not isinstance(item, dict):
                self.problem(c_at, "Must be a JSON object.")
                ok = False
                continue
            values, extra = self.values(model, item, c_at, parent.name)
            row = model(**{parent.attname: certificate.pk})
            for attname, value in extra.items():
                setattr(row, attname, value)
            for model_field in _exported_fields(model, parent.name):
                if _to_instance(model_field) and values.get(model_field.name) is not None:
                    if values[model_field.name] != THIS_INSTANCE:
                        self.problem(
                            f"{c_at}.{model_field.name}", f'Give "{THIS_INSTANCE}" or null.'
                        )
                        ok = False
                    setattr(row, model_field.attname, self.instance_id)
            try:
                # Every field and constraint the model declares, as a form for it would check.
                row.full_clean()
            except ValidationError as error:
                for name, messages in error.message_dict.items():
                    where = c_at if name == "__all__" else f"{c_at}.{name}"
                    for message in messages:
                        self.problem(where, message)
                ok = False
                continue
            if model._meta.label == CRL_MODEL and not self._check_crl(certificate, row, c_at):
                ok = False
                continue
            row.save()
        if model._meta.label == CRL_MODEL and items:
            # As the CRL upload leaves it (certificates/revocation.py): the CA's summary line
            # per CRL, which the console keeps itself and the document does not carry.
            certificate.crl_summary = [
                crl.summary() for crl in certificate.revocation_lists.order_by("issuer")
            ]
            certificate.save(update_fields=["crl_summary", "updated_at"])
        return ok

    def _check_crl(self, certificate: Certificate, row: models.Model, at: str) -> bool:
        """An imported CRL passes the upload's validation (certificates/revocation.py): signed by
        the imported CA or its intermediates, complete, and current. What the document says of
        it (issuer, dates, count, fingerprint) is replaced by what the CRL itself says."""
        if certificate.kind != Certificate.Kind.CA:
            self.problem(at, "Only CA certificates carry revocation lists.")
            return False
        try:
            checked = revocation.validate_crl(
                bytes(row.der), certificate.certificate_pem, row.issuer_chain_pem or None
            )
        except revocation.CrlError as error:
            field = CRL_FIELDS.get(error.field, "der")
            self.problem(f"{at}.{field}", error.message)
            return False
        row.issuer = checked.issuer
        row.issuer_chain_pem = checked.issuer_chain_pem
        row.issuer_chain_subjects = list(checked.issuer_chain_subjects)
        row.der = checked.der
        row.fingerprint_sha256 = checked.fingerprint_sha256
        row.crl_number = "" if checked.crl_number is None else str(checked.crl_number)
        row.this_update = checked.this_update
        row.next_update = checked.next_update
        row.revoked_count = checked.revoked_count
        return True

    def check_all_built(self) -> None:
        """Every object of the document was built, or a problem says why not."""
        if self.problems:
            return
        for section in SECTIONS:
            for index, at, _ in self._items(section):
                if index not in self.rows[section]:
                    self.problem(at, "Could not be imported.")

    def guarded(self, at: str, build, *args) -> Any:
        """One object's writes in a savepoint: a constraint the forms did not foresee becomes
        a problem of that object, and the transaction can go on to check the others."""
        try:
            with transaction.atomic():
                return build(*args)
        except (IntegrityError, DataError) as error:
            self.problem(at, f"The database refused it: {error}".strip())
            return None

    def _tls_policy(self, item: dict, at: str) -> TlsPolicy | None:
        values, extra = self.values(TlsPolicy, item, at)
        data = {
            name: values.get(name, TlsPolicy._meta.get_field(name).get_default())
            for name in TlsPolicyForm.Meta.fields
        }
        existing = TlsPolicy.objects.filter(
            name__iexact=str(values.get("name", "")).strip(), predefined=False
        ).first()
        # Checked as an edit of the existing policy of that name, if any, so the name is no
        # problem; policies are values: the same policy in this console is used, not copied.
        form = TlsPolicyForm(data, instance=TlsPolicy(pk=existing.pk) if existing else None)
        if not self.form_problems(form, at):
            return None
        if existing is not None:
            if all(
                _same(form.cleaned_data[name], getattr(existing, name))
                for name in ("min_version", "max_version", "ciphers", "tls13_ciphersuites")
            ):
                return existing
            self.problem(
                f"{at}.name",
                f"A TLS security policy named {existing.name} already exists in this console with "
                "other settings; rename the policy in the document (and the listeners that "
                "name it).",
            )
            return None
        policy = TlsPolicy(**form.cleaned_data, predefined=False)
        for attname, value in extra.items():
            setattr(policy, attname, value)
        policy.save()
        self.created.append(policy)
        return policy

    def _acl(self, item: dict, at: str) -> AccessControlList | None:
        values, extra = self.values(AccessControlList, item, at)
        entries = item.get("entries", [])
        lines: list[str] = []
        entries_ok = isinstance(entries, list) and len(entries) <= NESTED_LIMITS["entries"]
        if not entries_ok:
            self.problem(
                f"{at}.entries", f"Must be a list of at most {NESTED_LIMITS['entries']} entries."
            )
            entries = []
        for e_index, entry in enumerate(entries):
            e_at = f"{at}.entries[{e_index}]"
            if not isinstance(entry, dict):
                self.problem(e_at, "Must be a JSON object.")
                entries_ok = False
                continue
            entry_values, _ = self.values(AclEntry, entry, e_at, "acl")
            cidr = entry_values.get("cidr")
            description = entry_values.get("description", "")
            if not isinstance(cidr, str) or not cidr or any(c.isspace() for c in cidr):
                self.problem(f"{e_at}.cidr", "Give one address or CIDR block.")
                entries_ok = False
                continue
            if "\n" in description or "\r" in description:
                self.problem(f"{e_at}.description", "One line only.")
                entries_ok = False
                continue
            lines.append(f"{cidr} {description}".rstrip())
        form = AccessControlListForm(
            {
                "name": values.get("name", ""),
                "description": values.get("description", ""),
                "entries": "\n".join(lines),
            }
        )
        if not self.form_problems(form, at) or not entries_ok:
            return None
        acl = AccessControlList(
            name=form.cleaned_data["name"], description=form.cleaned_data["description"]
        )
        for attname, value in extra.items():
            setattr(acl, attname, value)
        acl.save()
        AclEntry.objects.bulk_create(
            AclEntry(acl=acl, cidr=entry.cidr, description=entry.description)
            for entry in form.parsed_entries
        )
        self.created.append(acl)
        return acl

    def _server_group(self, item: dict, at: str) -> ServerGroup | None:
        values, extra = self.values(ServerGroup, item, at)
        ca, ca_failed = self.ref("certificates", values.get("backend_ca_certificate"))
        data = {
            name: values.get(name, ServerGroup._meta.get_field(name).get_default())
            for name in ServerGroupForm.Meta.fields
        }
        data["backend_ca_certificate"] = getattr(ca, "pk", None)
        form = ServerGroupForm(data)
        ok = self.form_problems(form, at, skip=["backend_ca_certificate"] if ca_failed else ())
        if ca is not None and ca.kind != Certificate.Kind.CA:
            self.problem(f"{at}.backend_ca_certificate", f"{ca.name} is not a CA certificate.")
            ok = False
        backend = (
            data["backend_protocol"]
            if data["backend_protocol"] in ServerGroup.BackendProtocol.values
            else "http"
        )

        carried: dict[tuple[Any, Any], dict[str, Any]] = {}
        servers = item.get("servers", [])
        rows: list[dict] = []
        if not isinstance(servers, list) or len(servers) > NESTED_LIMITS["servers"]:
            self.problem(
                f"{at}.servers", f"Must be a list of at most {NESTED_LIMITS['servers']} servers."
            )
            ok = False
        else:
            formset_data: dict[str, Any] = {
                "servers-TOTAL_FORMS": str(len(servers)),
                "servers-INITIAL_FORMS": "0",
                "servers-MIN_NUM_FORMS": "0",
                "servers-MAX_NUM_FORMS": str(NESTED_LIMITS["servers"]),
            }
            for s_index, server in enumerate(servers):
                if not isinstance(server, dict):
                    self.problem(f"{at}.servers[{s_index}]", "Must be a JSON object.")
                    ok = False
                    continue
                server_values, server_extra = self.values(
                    BackendServer, server, f"{at}.servers[{s_index}]", "group"
                )
                # What the server form does not edit (its state, deregistration delay, when it
                # began draining), written after the form's rows.
                carried[(server_values.get("address"), server_values.get("port"))] = server_extra
                server_values.setdefault("weight", 100)
                server_values.setdefault("description", "")
                for name, value in server_values.items():
                    formset_data[f"servers-{s_index}-{name}"] = value
            formset = BackendServerFormSet(formset_data, prefix="servers")
            if self.form_problems(formset, f"{at}.servers"):
                rows = formset.rows()
            else:
                ok = False

        check = item.get("health_check")
        check_values: dict[str, Any] = {}
        if check is not None:
            if not isinstance(check, dict):
                self.problem(f"{at}.health_check", "Must be a JSON object or null.")
                ok = False
            else:
                check_values, _ = self.values(HealthCheck, check, f"{at}.health_check", "group")
        source = HealthCheck(**services.default_health_check(backend))
        check_data = {name: getattr(source, name) for name in HealthCheckForm.Meta.fields}
        check_data.update(check_values)
        if passive.applies(backend):
            # The group's Passive Health Check goes through the form that checks it in the
            # console (ranges, max ejection time at least the base); the group keeps it.
            check_data.update({name: item[name] for name in passive.PASSIVE_FIELDS if name in item})
        check_data = {k: ("" if v is None else v) for k, v in check_data.items()}
        check_form = HealthCheckForm(check_data, backend_protocol=backend)
        ok = self.form_problems(check_form, f"{at}.health_check") and ok
        if not ok:
            return None
        cleaned = form.cleaned_data
        group = ServerGroup(**{name: cleaned[name] for name in ServerGroupForm.Meta.fields})
        for attname, value in extra.items():
            setattr(group, attname, value)
        group.save()
        services.replace_servers(group, rows)
        for (address, port), server_extra in carried.items():
            if server_extra.get("state") == BackendServer.State.DRAINING:
                # A drain goes on where it was; one whose start is not known starts now.
                server_extra.setdefault("draining_since", None)
                server_extra["draining_since"] = server_extra["draining_since"] or timezone.now()
            if server_extra:
                group.servers.filter(address=address, port=port).update(**server_extra)
        # The form's Passive Health Check fields are the group's, restored with its own fields.
        check_fields, _ = passive.split(check_form.cleaned_data)
        HealthCheck.objects.create(group=group, **check_fields)
        self.created.append(group)
        return group

    def _listener(self, instance: Instance, index: int, item: dict, at: str) -> Listener | None:
        values, extra = self.values(Listener, item, at, "instance")
        failed: set[str] = set()

        def pk(section: str, name: str) -> Any:
            row, bad = self.ref(section, values.get(name))
            if bad:
                failed.add(name)
            return row

        group = pk("server_groups", "server_group")
        acl = pk("acls", "acl")
        policy = pk("tls_policies", "tls_policy")
        default = pk("certificates", "default_certificate")
        ca = pk("certificates", "ca_certificate")
        additional = []
        for name in values.get("additional_certificates") or []:
            row, bad = self.ref("certificates", name)
            if bad:
                failed.add("additional_certificates")
            elif row is not None:
                additional.append(row)
        quic = None
        if values.get("quic_listener") is not None:
            quic = self.rows["listeners"].get(values["quic_listener"])
            if quic is None:
                failed.add("quic_listener")

        protocol = values.get("protocol")
        tags = values.get("tags", [])
        tags_ok = isinstance(tags, list) and all(
            isinstance(t, dict)
            and isinstance(t.get("key"), str)
            and isinstance(t.get("value", ""), str)
            for t in tags
        )
        if not tags_ok:
            self.problem(f"{at}.tags", 'Give a list of {"key": ..., "value": ...} objects.')
        data: dict[str, Any] = {
            name: Listener._meta.get_field(name).get_default() for name in SETTINGS_FIELDS
        }
        data.update({"name": "", "description": ""})
        data.update(
            {
                name: value
                for name, value in values.items()
                if name in SETTINGS_FIELDS or name in ("name", "description", "protocol", "port")
            }
        )
        data["tags"] = format_tags(tags) if tags_ok else ""
        data["acl"] = getattr(acl, "pk", None)
        data["quic_listener"] = getattr(quic, "pk", None)
        data = {k: ("" if v is None else v) for k, v in data.items()}
        state = values.get("desired_state", Listener.DesiredState.RUNNING)
        if state not in Listener.DesiredState.values:
            self.problem(f"{at}.desired_state", "Must be running or stopped.")
        data["auto_enable"] = state == Listener.DesiredState.RUNNING
        form = ProtocolListenerForm(data, instance=instance)
        ok = self.form_problems(form, at, rename={"auto_enable": "desired_state"}, skip=failed)
        if not instance.supports_mutual_authentication:
            # The forms show these disabled on a Basic instance (and so ignore them): say so,
            # rather than drop what the document asks for.
            for name in ("mutual_authentication", "retrieve_client_ip"):
                if values.get(name):
                    self.problem(
                        f"{at}.{name}", "Basic edition instances do not support this option."
                    )
                    ok = False
        ok = ok and tags_ok and not failed
        if protocol not in Listener.Protocol.values:
            return None
        cleaned = form.cleaned_data if form.is_valid() else {}

        certificates = None
        if protocol in CERTIFICATE:
            cert_form = CertificateStepForm(
                {
                    "default_certificate": getattr(default, "pk", None),
                    "additional_certificates": [c.pk for c in additional],
                    "tls_policy": getattr(policy, "pk", None) or DEFAULT_TLS_POLICY,
                    "mutual_authentication": bool(values.get("mutual_authentication")),
                    "ca_certificate": getattr(ca, "pk", None),
                },
                instance=instance,
                protocol=protocol,
            )
            if self.form_problems(cert_form, at, skip=failed):
                certificates = cert_form.certificate_values()
            else:
                ok = False
        else:
            for name in (
                "default_certificate",
                "tls_policy",
                "ca_certificate",
                "additional_certificates",
            ):
                if values.get(name):
                    self.problem(f"{at}.{name}", f"A {protocol} listener has no {name}.")
                    ok = False

        if group is not None:
            if group.backend_protocol not in compatible_backend_protocols(protocol):
                self.problem(
                    f"{at}.server_group",
                    f"{group.name} uses backend protocol {group.get_backend_protocol_display()}, "
                    f"which a {Listener.Protocol(protocol).label} listener cannot forward to.",
                )
                ok = False
            elif cleaned:  # its rules read the listener's cleaned settings
                group_form = ServerGroupStepForm(
                    {"group_mode": "existing", "server_group": group.pk},
                    protocol=protocol,
                    scheduler=cleaned["scheduler"],
                    settings=cleaned,
                )
                ok = self.form_problems(group_form, at) and ok

        rules = item.get("forwarding_rules", [])
        if not isinstance(rules, list) or len(rules) > NESTED_LIMITS["forwarding_rules"]:
            self.problem(
                f"{at}.forwarding_rules",
                f"Must be a list of at most {NESTED_LIMITS['forwarding_rules']} rules.",
            )
            return None
        pages = item.get("error_pages", [])
        if not isinstance(pages, list) or len(pages) > NESTED_LIMITS["error_pages"]:
            self.problem(
                f"{at}.error_pages",
                f"Must be a list of at most {NESTED_LIMITS['error_pages']} pages, one per status.",
            )
            return None
        if pages and protocol not in Listener.LAYER7_PROTOCOLS:
            self.problem(f"{at}.error_pages", f"A {protocol} listener has no error pages.")
            return None
        if not ok or group is None:
            return None
        certificates = dict(certificates or {})
        additional_rows = certificates.pop("additional_certificates", [])
        listener = Listener(
            instance=instance,
            protocol=cleaned["protocol"],
            port=cleaned["port"],
            name=cleaned["name"],
            server_group=group,
            desired_state=(
                Listener.DesiredState.RUNNING
                if cleaned["auto_enable"]
                else Listener.DesiredState.STOPPED
            ),
            status=Listener.Status.CONFIGURING,
            **form.settings_values(),
            **certificates,
        )
        for attname, value in extra.items():
            setattr(listener, attname, value)
        listener.save()
        if additional_rows:
            listener.additional_certificates.set(additional_rows)
        if not self._rules(listener, rules, at):
            return None
        if not self._error_pages(listener, pages, at):
            return None
        self.created.append(listener)
        return listener

    def _rules(self, listener: Listener, rules: list, at: str) -> bool:
        ok = True
        for position, rule in enumerate(rules):
            r_at = f"{at}.forwarding_rules[{position}]"
            if not isinstance(rule, dict):
                self.problem(r_at, "Must be a JSON object.")
                ok = False
                continue
            values, extra = self.values(ForwardingRule, rule, r_at, "listener")
            group, group_failed = self.ref("server_groups", values.get("server_group"))
            conditions = values.get("conditions", [])
            if not self._conditions_ok(conditions, f"{r_at}.conditions"):
                ok = False
                continue
            scratch = ForwardingRule(
                listener=listener,
                **{
                    name: value
                    for name, value in values.items()
                    if name in services.RULE_FIELDS and name != "server_group"
                },
            )
            scratch.server_group_id = getattr(group, "pk", None)
            data = ForwardingRuleForm.initial_from(scratch)
            data = {k: ("" if v is None else v) for k, v in data.items()}
            form = ForwardingRuleForm(data, listener=listener)
            if (
                not self.form_problems(
                    form,
                    r_at,
                    rename={
                        "host": "conditions",
                        "path": "conditions",
                        "path_match": "conditions",
                        "methods": "conditions",
                        "header_name": "conditions",
                        "header_values": "conditions",
                        "query": "conditions",
                        "source_ip": "conditions",
                    },
                    skip=["server_group"] if group_failed else (),
                )
                or group_failed
            ):
                ok = False
                continue
            stored = ForwardingRule(listener=listener, position=position)
            form.apply_to(stored)
            for attname, value in extra.items():
                setattr(stored, attname, value)
            stored.save()
        return ok

    def _error_pages(self, listener: Listener, pages: list, at: str) -> bool:
        """A listener's error pages, checked by the console dialog's form."""
        ok = True
        seen: set[str] = set()
        for index, page in enumerate(pages):
            p_at = f"{at}.error_pages[{index}]"
            if not isinstance(page, dict):
                self.problem(p_at, "Must be a JSON object.")
                ok = False
                continue
            values, extra = self.values(ErrorPage, page, p_at, "listener")
            status = extra.get("status")
            if "status" not in page:
                self.problem(f"{p_at}.status", "Give the status: 502, 503, 504 or maintenance.")
            if status is None:
                ok = False
                continue
            if status in seen:
                self.problem(f"{p_at}.status", f"A second page for {status}.")
                ok = False
                continue
            seen.add(status)
            form = ErrorPageForm(
                {
                    "content_type": values.get("content_type", ErrorPage.ContentType.HTML),
                    "body": values.get("body", ""),
                }
            )
            if not self.form_problems(form, p_at):
                ok = False
                continue
            ErrorPage.objects.create(listener=listener, status=status, **form.cleaned_data)
        return ok

    def _conditions_ok(self, conditions: Any, at: str) -> bool:
        kinds = {"host", "path", "method", "header", "query", "source_ip"}
        if not isinstance(conditions, list) or not conditions:
            self.problem(at, "Give a list of conditions.")
            return False
        ok = True
        seen: set[str] = set()
        for c_index, condition in enumerate(conditions):
            c_at = f"{at}[{c_index}]"
            if (
                not isinstance(condition, dict)
                or condition.get("type") not in kinds
                or not isinstance(condition.get("values", []), list)
                or not all(isinstance(v, str) for v in condition.get("values", []))
            ):
                self.problem(
                    c_at,
                    f'A condition is {{"type": one of {sorted(kinds)}, "values": [text, ...]}}.',
                )
                ok = False
            elif condition["type"] in seen:
                # The rule dialog holds one condition of each type.
                self.problem(c_at, f"A rule has one {condition['type']} condition.")
                ok = False
            else:
                seen.add(condition["type"])
        return ok

    # -- the instance -------------------------------------------------------------------------
    def instance_values(self) -> tuple[dict[str, Any], dict[str, Any]]:
        item = self.document.get("instance") if isinstance(self.document, dict) else None
        if not isinstance(item, dict):
            return {}, {}
        return self.values(Instance, item, "instance")


def _instance_form_data(values: dict[str, Any], base: Instance) -> dict[str, Any]:
    from console.forms import InstanceForm

    data = {name: getattr(base, name) for name in InstanceForm.Meta.fields}
    data.update({name: value for name, value in values.items() if name in InstanceForm.Meta.fields})
    return {k: ("" if v is None else v) for k, v in data.items()}


def _imported_instance(result: Imported) -> Instance:
    return result.instance


@transaction.atomic
@audited("instance.import", Instance, key="instance_id", created=_imported_instance)
def import_instance(
    *,
    document: Any,
    passphrase: str,
    instance_id: str | None = None,
    name: str = "",
    bind_address: str = "",
) -> Imported:
    """Import a backup into a new instance (``name`` and ``bind_address`` override the
    document's) or into the existing empty instance ``instance_id`` (which keeps its name, bind
    address and nodes, and takes the document's other settings).

    Raises ``BackupInvalid`` with every problem (nothing is changed), ``TargetNotEmpty``, or
    ``NotFound``.
    """
    from console.forms import InstanceForm

    work = _Import(document, passphrase)
    work.read()
    if work.problems and not isinstance(document, dict):
        raise BackupInvalid(work.problems)
    if any(p["field"] in ("format", "format_version") for p in work.problems):
        raise BackupInvalid(work.problems)
    work.check_certificates()

    values, extra = work.instance_values()
    if instance_id is not None:
        instance = Instance.objects.select_for_update(no_key=True).filter(pk=instance_id).first()
        if instance is None:
            raise services.NotFound(f"Instance {instance_id} no longer exists.")
        count = instance.listeners.count()
        if count:
            raise TargetNotEmpty(
                f"Instance {instance.name} has {count} listener(s): import into a new instance, "
                "or into one without listeners.",
            )
        values = {**values, "name": instance.name, "bind_address": instance.bind_address}
        base = instance
    else:
        values.update({"name": name} if name else {})
        values.update({"bind_address": bind_address} if bind_address else {})
        base = instance = Instance()
    form = InstanceForm(_instance_form_data(values, base))
    if work.form_problems(form, "instance"):
        for field_name in InstanceForm.Meta.fields:
            setattr(instance, field_name, form.cleaned_data[field_name])
        for attname, value in extra.items():
            setattr(instance, attname, value)
    elif instance_id is None:
        # The listeners' rules (quota, ports, bandwidth) are still checked, against a stand-in
        # that is never committed, since there is already a problem.
        instance = Instance(name="import")
    instance.save()

    imported = Imported(instance=instance)
    work.build(instance, imported)
    work.check_all_built()
    if work.problems:
        raise BackupInvalid(work.problems)
    if imported.listeners:
        services.listeners_changed(imported.listeners)
    else:
        services.instances_changed({instance.pk})
    instance.refresh_from_db()
    for listener in imported.listeners:
        listener.refresh_from_db()  # listeners_changed set their Configuring state in SQL
    for row in work.created + imported.certificates:
        record(f"{_action_prefix(row)}.import", row, {}, snapshot(row))
    return imported


def _action_prefix(row: models.Model) -> str:
    return {
        Listener: "listener",
        ServerGroup: "server_group",
        Certificate: "certificate",
        TlsPolicy: "tls_policy",
        AccessControlList: "acl",
    }[type(row)]
