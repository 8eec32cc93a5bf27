"""Load balancer instances: the unit that owns listeners and receives one snapshot."""

from __future__ import annotations

from django.db import models
from django.db.models import F

from console.ids import new_id


def new_instance_id() -> str:
    return new_id("lb")


class Instance(models.Model):
    class Edition(models.TextChoices):
        BASIC = "basic", "Basic"
        STANDARD = "standard", "Standard"

    id = models.CharField(primary_key=True, max_length=16, default=new_instance_id, editable=False)
    name = models.CharField(max_length=128)
    edition = models.CharField(max_length=16, choices=Edition.choices, default=Edition.STANDARD)
    bind_address = models.GenericIPAddressField(
        default="127.0.0.1",
        help_text="Address the dataplane binds this instance's listeners on.",
    )
    listener_quota = models.PositiveIntegerField(default=50)
    # Desired configuration version. Every change to a listener or to something a listener uses
    # bumps it in the same transaction; nodes report the generation they applied.
    generation = models.PositiveBigIntegerField(default=1)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} ({self.id})"

    def bump_generation(self) -> int:
        """Increase the generation atomically and return the new value.

        Must run inside the transaction that saves the change, so the generation and the
        desired state can never disagree.
        """
        Instance.objects.filter(pk=self.pk).update(generation=F("generation") + 1)
        self.refresh_from_db(fields=["generation"])
        return self.generation

    @staticmethod
    def bump_generations(instance_ids: set[str]) -> None:
        """Bump several instances at once, e.g. when a shared certificate changes."""
        if instance_ids:
            Instance.objects.filter(pk__in=instance_ids).update(generation=F("generation") + 1)

    @property
    def supports_mutual_authentication(self) -> bool:
        # Seed 001: Basic edition instances support neither mutual authentication nor
        # Retrieve Client IP.
        return self.edition == self.Edition.STANDARD
