"""Listeners and what they use."""

from __future__ import annotations

from django.db import models
from django.urls import reverse

from console.ids import new_id
from console.models import Instance


def new_listener_id() -> str:
    return new_id("lsn")


class Listener(models.Model):
    class Protocol(models.TextChoices):
        HTTP = "http", "HTTP"
        HTTPS = "https", "HTTPS"
        TCP = "tcp", "TCP"
        TCP_SSL = "tcp_ssl", "TCP SSL"

    class Status(models.TextChoices):
        CONFIGURING = "configuring", "Configuring"
        RUNNING = "running", "Running"
        STOPPED = "stopped", "Stopped"
        FAILED = "failed", "Failed"

    id = models.CharField(primary_key=True, max_length=16, default=new_listener_id, editable=False)
    instance = models.ForeignKey(Instance, on_delete=models.PROTECT, related_name="listeners")
    name = models.CharField(max_length=128)
    protocol = models.CharField(max_length=16, choices=Protocol.choices)
    port = models.PositiveIntegerField()
    status = models.CharField(
        max_length=16, choices=Status.choices, default=Status.CONFIGURING
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["port", "protocol"]

    def __str__(self) -> str:
        return f"{self.name} ({self.id})"

    def get_absolute_url(self) -> str:
        return reverse("instance-listeners", args=[self.instance_id])
