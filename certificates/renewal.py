"""ACME issuance and renewal: the write path (one service function per use case) and the task.

Use cases, each one transaction with @audited:
- `request_issuance`: the operator asks for a certificate ("Issue with ACME"); an issuance and
  its first attempt are saved and the attempt is queued once committed;
- `request_renewal`: "Renew now", or beat finding a certificate due (`queue_due_renewals`);
- `publish_challenges` / `withdraw_challenges`: the challenges of a running attempt go into the
  instance's snapshot (generation bumped, pushed on commit) and leave it again;
- `record_attempt_result`: a finished attempt; on success the certificate is created, or replaced
  on every listener using it through listeners.services.replace_certificate (the same hot swap
  as an upload: new handshakes get the new certificate, open connections carry on).

`run_attempt` is what the Celery task runs: it talks to the CA between those transactions, so no
row stays locked while the network answers.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from certificates import acme, keystore
from certificates.acme_models import AcmeAccount, AcmeAttempt, AcmeChallenge, AcmeIssuance
from certificates.models import Certificate
from certificates.validation import CertificateError, validate_server_certificate
from console.audit import UPDATE, audited
from console.models import Instance
from listeners import services
from listeners.models import Listener

log = logging.getLogger(__name__)

# A renewal is due after this share of the certificate's lifetime (Let's Encrypt's advice).
RENEW_AFTER = 2 / 3
# A worker that died mid-attempt leaves it running; past this it is marked failed.
STALE_ATTEMPT = timedelta(minutes=15)


class IssuanceRefused(services.RuleViolation):
    """The instance cannot answer the challenge; `field` names the form field it is about."""


# -- what can answer a challenge -------------------------------------------------------------------


def challenge_listener(instance: Instance | None, challenge: str) -> Listener:
    """The listener of `instance` the CA will reach for `challenge`, or IssuanceRefused saying
    what is missing."""
    if instance is None:
        raise IssuanceRefused(
            "The instance that answered the challenges was deleted; choose another.",
            field="instance",
        )
    if challenge == AcmeIssuance.Challenge.HTTP_01:
        port, protocols, label = settings.ACME_HTTP01_PORT, ("http",), "an HTTP listener"
        why = "the CA fetches http://<name>/.well-known/acme-challenge/ on that port"
    else:
        port, protocols, label = settings.ACME_TLS_ALPN01_PORT, ("https", "tcp_ssl"), "an HTTPS"
        label += " or TCP SSL listener"
        why = "the CA opens a TLS connection with ALPN acme-tls/1 on that port"
    listener = (
        Listener.objects.filter(instance=instance, port=port, protocol__in=protocols)
        .order_by("pk")
        .first()
    )
    if listener is None:
        raise IssuanceRefused(
            f"{challenge.upper()} needs {label} on port {port} of instance {instance.name}: "
            f"{why}. Add one, or choose the other challenge.",
            field="challenge",
        )
    if listener.desired_state != Listener.DesiredState.RUNNING:
        raise IssuanceRefused(
            f"Listener {listener.name} on port {port} is stopped; start it so the CA can reach it.",
            field="challenge",
        )
    if listener.status == Listener.Status.FAILED:
        # Its port is not served (taken by another program, say): the CA would reach nothing,
        # or whatever holds the port, and report a timeout or a 404 that hides the cause.
        reason = (listener.last_error or "no reason given").strip().splitlines()[0][:300]
        raise IssuanceRefused(
            f"Listener {listener.name} on port {port} has failed on the dataplane ({reason}), so "
            "the CA cannot reach it; fix the listener first.",
            field="challenge",
        )
    if not instance.nodes.exists():
        raise IssuanceRefused(
            f"Instance {instance.name} has no dataplane node to answer the challenge.",
            field="instance",
        )
    return listener


# -- use cases -----------------------------------------------------------------------------------


def _queue_attempt(attempt: AcmeAttempt) -> None:
    from certificates.tasks import run_acme_attempt

    transaction.on_commit(
        lambda: run_acme_attempt.apply_async(kwargs={"attempt_id": attempt.pk}), robust=True
    )


@transaction.atomic
@audited("certificate.acme_request", AcmeIssuance)
def request_issuance(
    *,
    name: str,
    domains: list[str],
    directory_url: str,
    email: str,
    challenge: str,
    instance: Instance,
    key_algorithm: str,
) -> AcmeIssuance:
    locked = Instance.objects.select_for_update(no_key=True).filter(pk=instance.pk).first()
    challenge_listener(locked, challenge)
    issuance = AcmeIssuance.objects.create(
        name=name,
        domains=domains,
        directory_url=directory_url,
        email=email,
        challenge=challenge,
        instance=locked,
        key_algorithm=key_algorithm,
    )
    attempt = issuance.attempts.create(kind=AcmeAttempt.Kind.ISSUE)
    _queue_attempt(attempt)
    return issuance


@transaction.atomic
# Audited as the attempt it creates: the issuance row itself does not change, so a record
# keyed on it would be skipped as "nothing changed".
@audited("certificate.acme_renew", AcmeAttempt, created=lambda attempt: attempt)
def request_renewal(*, issuance_id: str) -> AcmeAttempt:
    """Queue an attempt now (at most one at a time per certificate)."""
    issuance = AcmeIssuance.objects.select_for_update().filter(pk=issuance_id).first()
    if issuance is None:
        raise services.NotFound(f"ACME certificate {issuance_id} no longer exists.")
    running = issuance.attempts.filter(
        state__in=(AcmeAttempt.State.QUEUED, AcmeAttempt.State.RUNNING)
    ).first()
    if running is not None:
        raise services.RuleViolation("An attempt for this certificate is already in progress.")
    kind = AcmeAttempt.Kind.RENEW if issuance.certificate_id else AcmeAttempt.Kind.ISSUE
    attempt = issuance.attempts.create(kind=kind)
    _queue_attempt(attempt)
    return attempt


@transaction.atomic
@audited("certificate.acme_delete", AcmeIssuance, key="issuance_id", lock=UPDATE)
def delete_issuance(*, issuance_id: str) -> AcmeIssuance:
    """Drop an ACME order that never produced a certificate (an issued one goes with its
    certificate, through Delete on the certificate's page)."""
    issuance = AcmeIssuance.objects.select_for_update().filter(pk=issuance_id).first()
    if issuance is None:
        raise services.NotFound(f"ACME certificate {issuance_id} no longer exists.")
    if issuance.certificate_id:
        raise services.RuleViolation(
            "This ACME certificate has been issued: delete the certificate instead."
        )
    if issuance.attempts.filter(
        state__in=(AcmeAttempt.State.QUEUED, AcmeAttempt.State.RUNNING)
    ).exists():
        raise services.RuleViolation("Wait for the attempt in progress to finish.")
    issuance.delete()
    return issuance


@transaction.atomic
def publish_challenges(
    *, attempt_id: int, instance_id: str, challenges: list[acme.Challenge]
) -> int:
    """Put the attempt's challenges in the instance's snapshot; returns the generation that
    carries them. No audit record: nothing an operator chose changes, the attempt is the record."""
    AcmeChallenge.objects.filter(attempt_id=attempt_id).delete()
    AcmeChallenge.objects.bulk_create(
        AcmeChallenge(
            attempt_id=attempt_id,
            instance_id=instance_id,
            type=c.type,
            domain=c.domain,
            token=c.token,
            key_authorization=c.key_authorization,
        )
        for c in challenges
    )
    services.instances_changed({instance_id})
    return Instance.objects.get(pk=instance_id).generation


@transaction.atomic
def withdraw_challenges(*, attempt_id: int) -> None:
    """Take the attempt's challenges out of the snapshots again."""
    instance_ids = set(
        AcmeChallenge.objects.filter(attempt_id=attempt_id).values_list("instance_id", flat=True)
    )
    if instance_ids:
        AcmeChallenge.objects.filter(attempt_id=attempt_id).delete()
        services.instances_changed(instance_ids)


@transaction.atomic
def _set_step(attempt_id: int, step: str) -> None:
    AcmeAttempt.objects.filter(pk=attempt_id).update(step=step)


@transaction.atomic
def start_attempt(*, attempt_id: int) -> AcmeAttempt | None:
    """Mark a queued attempt running; None when it is not queued (a duplicate delivery)."""
    attempt = (
        AcmeAttempt.objects.select_for_update(of=("self",))
        .select_related("issuance__instance", "issuance__certificate")
        .filter(pk=attempt_id)
        .first()
    )
    if attempt is None or attempt.state != AcmeAttempt.State.QUEUED:
        return None
    attempt.state = AcmeAttempt.State.RUNNING
    attempt.started_at = timezone.now()
    attempt.step = "Starting"
    attempt.save(update_fields=["state", "started_at", "step"])
    return attempt


@transaction.atomic
@audited("certificate.acme_attempt", AcmeIssuance, key="issuance_id", lock=UPDATE)
def record_attempt_result(
    *,
    issuance_id: str,
    attempt_id: int,
    issued: acme.Issued | None = None,
    problem: str = "",
) -> AcmeAttempt:
    """Store a finished attempt; with `issued`, create or replace the certificate."""
    issuance = AcmeIssuance.objects.select_for_update().get(pk=issuance_id)
    attempt = AcmeAttempt.objects.select_for_update().get(pk=attempt_id)
    now = timezone.now()
    if issued is not None:
        try:
            certificate = _store_certificate(issuance, issued)
        except (services.RuleViolation, CertificateError) as refused:
            # The transaction goes on: the attempt is recorded as failed instead.
            issued, problem = None, f"the new certificate could not be installed: {refused}"
        else:
            issuance.certificate = certificate
            issuance.renew_at = issued.renew_at or _two_thirds(certificate)
            issuance.retry_at = None
            issuance.consecutive_failures = 0
            attempt.state = AcmeAttempt.State.SUCCEEDED
            attempt.message = (
                f"Issued serial {certificate.serial}, valid until "
                f"{certificate.not_after:%Y-%m-%d %H:%M} UTC; renewal due "
                f"{issuance.renew_at:%Y-%m-%d %H:%M} UTC"
                + (" (the CA's ARI window)" if issued.renew_at else "")
                + "."
            )
    if issued is None:
        issuance.consecutive_failures += 1
        issuance.retry_at = now + retry_delay(issuance.consecutive_failures)
        attempt.state = AcmeAttempt.State.FAILED
        attempt.message = problem[:4000]
    attempt.finished_at = now
    attempt.step = ""
    attempt.save()
    issuance.save()
    if attempt.state == AcmeAttempt.State.FAILED and attempt.kind == AcmeAttempt.Kind.RENEW:
        from certificates import alerts

        alerts.renewal_failed(issuance, attempt)
    return attempt


def _store_certificate(issuance: AcmeIssuance, issued: acme.Issued) -> Certificate:
    validated = validate_server_certificate(
        issued.certificate_pem, issued.private_key_pem, issued.chain_pem or None
    )
    if issuance.certificate_id is None:
        return services.upload_certificate(
            name=issuance.name, kind=Certificate.Kind.SERVER, validated=validated
        )
    return services.replace_certificate(certificate_id=issuance.certificate_id, validated=validated)


def _two_thirds(certificate: Certificate) -> datetime:
    return certificate.not_before + (certificate.not_after - certificate.not_before) * RENEW_AFTER


def retry_delay(failures: int) -> timedelta:
    """Exponential backoff, capped: 10 min, 20, 40 ... at most a day by default."""
    seconds = settings.ACME_RETRY_BASE * 2 ** max(0, failures - 1)
    return timedelta(seconds=min(seconds, settings.ACME_RETRY_MAX))


@transaction.atomic
def _save_account(directory_url: str, email: str, key_pem: str, uri: str) -> AcmeAccount:
    account, _ = AcmeAccount.objects.update_or_create(
        directory_url=directory_url,
        email=email,
        defaults={"private_key_token": keystore.encrypt_private_key(key_pem), "uri": uri},
    )
    return account


# -- the task ------------------------------------------------------------------------------------


def run_attempt(attempt_id: int) -> str:
    """Run one queued attempt to its end; returns a summary for the worker's log."""
    attempt = start_attempt(attempt_id=attempt_id)
    if attempt is None:
        return f"attempt {attempt_id} is not queued"
    issuance = attempt.issuance
    try:
        issued = _order(attempt, issuance)
    except (acme.AcmeProblem, services.RuleViolation, keystore.KeystoreError) as problem:
        result = record_attempt_result(
            issuance_id=issuance.pk, attempt_id=attempt.pk, problem=str(problem)
        )
    except Exception as error:
        # An unexpected failure must still end the attempt, or the page would spin forever.
        log.exception("ACME attempt %s failed", attempt_id, extra={"issuance_id": issuance.pk})
        result = record_attempt_result(
            issuance_id=issuance.pk,
            attempt_id=attempt.pk,
            problem=f"internal error: {type(error).__name__}: {error}",
        )
    else:
        result = record_attempt_result(
            issuance_id=issuance.pk, attempt_id=attempt.pk, issued=issued
        )
    finally:
        withdraw_challenges(attempt_id=attempt.pk)
    log.info(
        "ACME attempt %s %s: %s",
        attempt_id,
        result.state,
        result.message,
        extra={"issuance_id": issuance.pk},
    )
    return f"{result.state}: {result.message}"


def _order(attempt: AcmeAttempt, issuance: AcmeIssuance) -> acme.Issued:
    challenge_listener(issuance.instance, issuance.challenge)
    instance = issuance.instance
    assert instance is not None
    account = AcmeAccount.objects.filter(
        directory_url=issuance.directory_url, email=issuance.email
    ).first()
    key_pem = account.private_key_pem() if account else acme.new_account_key()
    _set_step(attempt.pk, f"Contacting {issuance.directory_label}")
    session = acme.Session(issuance.directory_url, key_pem, verify=settings.ACME_CA_BUNDLE or True)
    uri = session.register(issuance.email, account.uri if account else "")
    if account is None or account.uri != uri:
        _save_account(issuance.directory_url, issuance.email, key_pem, uri)

    certificate_key = acme.new_certificate_key(issuance.key_algorithm)
    _set_step(attempt.pk, "Placing the order")
    challenges = session.new_order(certificate_key, list(issuance.domains), issuance.challenge)
    if challenges:
        _set_step(attempt.pk, f"Pushing {len(challenges)} challenge(s) to the dataplane")
        generation = publish_challenges(
            attempt_id=attempt.pk, instance_id=instance.pk, challenges=challenges
        )
        _wait_for_nodes(instance.pk, generation)
        _set_step(attempt.pk, "The CA is validating")
        session.answer()
    else:
        _set_step(attempt.pk, "Finalizing")
    return session.finish(certificate_key, timeout=settings.ACME_ORDER_TIMEOUT)


def _wait_for_nodes(instance_id: str, generation: int) -> None:
    """Push now (the queued push may wait behind other tasks) and wait until every node of the
    instance has applied the generation that carries the challenges."""
    from console import pipeline

    pipeline.push(instance_id, generation)
    deadline = time.monotonic() + settings.ACME_PUSH_TIMEOUT
    while True:
        instance = Instance.objects.get(pk=instance_id)
        nodes = list(instance.nodes.all())
        behind = [n for n in nodes if (n.applied_generation or 0) < generation]
        if not behind:
            return
        refused = [n for n in behind if (n.acked_generation or 0) >= generation]
        if refused:
            reasons = "; ".join(f"node {n.name}: {n.last_error}" for n in refused)
            raise acme.AcmeProblem(f"the dataplane refused the challenge: {reasons}")
        if time.monotonic() > deadline:
            reasons = "; ".join(f"node {n.name}: {n.last_error or 'no answer'}" for n in behind)
            raise acme.AcmeProblem(
                f"the dataplane did not apply the challenge within "
                f"{settings.ACME_PUSH_TIMEOUT:g} s ({reasons})"
            )
        time.sleep(0.2)
        pipeline.push(instance_id, generation)


# -- beat ----------------------------------------------------------------------------------------


def queue_due_renewals(now: datetime | None = None) -> list[int]:
    """Queue an attempt for every auto-renewing certificate that is due (renewal time reached and
    no retry pending, or a retry that has come), and end attempts a lost worker left running."""
    now = now or timezone.now()
    stale = AcmeAttempt.objects.filter(
        state=AcmeAttempt.State.RUNNING, started_at__lt=now - STALE_ATTEMPT
    )
    for attempt in stale:
        record_attempt_result(
            issuance_id=attempt.issuance_id,
            attempt_id=attempt.pk,
            problem="the worker running this attempt stopped before it finished",
        )
        withdraw_challenges(attempt_id=attempt.pk)
    due = AcmeIssuance.objects.filter(auto_renew=True, certificate__isnull=False).exclude(
        attempts__state__in=(AcmeAttempt.State.QUEUED, AcmeAttempt.State.RUNNING)
    )
    queued = []
    for issuance in due:
        retry_at = issuance.retry_at
        if retry_at is not None and retry_at > now:
            continue
        if retry_at is None and (issuance.renew_at is None or issuance.renew_at > now):
            continue
        try:
            queued.append(request_renewal(issuance_id=issuance.pk).pk)
        except services.RuleViolation:
            continue
    return queued
