"""First-run setup for ``make run``: the admin user and a default instance, when missing."""

from __future__ import annotations

import os
import secrets

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management.base import BaseCommand
from django.db import transaction

from console.models import Instance
from console.roles import ADMINISTRATORS, ensure_role_groups


class Command(BaseCommand):
    help = "Create the admin user if no user exists, and a default instance if none exists."

    def handle(self, *args: object, **options: object) -> None:
        with transaction.atomic():
            ensure_role_groups()
            self._ensure_admin()
            self._ensure_instance()

    def _ensure_admin(self) -> None:
        users = get_user_model().objects
        if users.exists():
            return
        password = os.environ.get("ADMIN_PASSWORD", "")
        generated = not password
        if generated:
            password = secrets.token_urlsafe(12)
        admin = users.create_user("admin", password=password)
        admin.groups.add(Group.objects.get(name=ADMINISTRATORS))
        if generated:
            # Printed once: it is stored only as a hash.
            self.stdout.write(
                self.style.WARNING(f"Created user 'admin' with generated password: {password}")
            )
        else:
            self.stdout.write("Created user 'admin' with the password from ADMIN_PASSWORD.")

    def _ensure_instance(self) -> None:
        if not Instance.objects.exists():
            instance = Instance.objects.create(name="default")
            self.stdout.write(f"Created default instance {instance.id}.")
