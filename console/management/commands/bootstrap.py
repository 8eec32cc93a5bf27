"""First-run setup for ``make run``: the admin user and a default instance, when missing."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management.base import BaseCommand, CommandParser
from django.db import transaction

from console import services
from console.models import DataplaneNode, Instance
from console.private_files import tighten
from console.roles import ADMINISTRATORS, ensure_role_groups
from listeners.services import RuleViolation


class Command(BaseCommand):
    help = "Create the admin user if no user exists, and a default instance if none exists."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--node-token-file", default="", help="Register a local node.")
        parser.add_argument("--node-url", default="http://127.0.0.1:9901")

    def handle(self, *args: object, **options: object) -> None:
        with transaction.atomic():
            ensure_role_groups()
            self._ensure_admin()
            self._ensure_instance()
            self._ensure_local_node(str(options["node_token_file"]), str(options["node_url"]))
        # What was made before the console's umask applied (the token the Makefile wrote, files
        # of an older version) becomes private too.
        changed = tighten(settings.VAR_DIR)
        if changed:
            self.stdout.write(f"Made {len(changed)} path(s) under {settings.VAR_DIR} private.")

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
            instance = services.create_instance(name="default")
            self.stdout.write(f"Created default instance {instance.id}.")

    def _ensure_local_node(self, token_file: str, control_url: str) -> None:
        """Register the dataplane node that ``make run`` starts, for the first instance."""
        if not token_file or DataplaneNode.objects.filter(control_url=control_url).exists():
            return
        token = Path(token_file).read_text().strip()
        instance = Instance.objects.order_by("created_at").first()
        try:
            services.add_node(
                instance_id=instance.pk, name="local", control_url=control_url, token=token
            )
        except RuleViolation as problem:
            self.stderr.write(f"Local dataplane node not registered: {problem}")
            return
        self.stdout.write(f"Registered dataplane node local ({control_url}) for {instance.id}.")
