"""Create (or update) a console user with a role: ``manage.py createuser NAME --role viewer``."""

from __future__ import annotations

import getpass
import os
import sys

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from console.roles import ROLES


class Command(BaseCommand):
    help = "Create a console user as an Administrator or a Viewer."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument("--role", choices=sorted(ROLES), default="viewer")
        parser.add_argument(
            "--password-env",
            default="",
            help="Read the password from this environment variable instead of prompting.",
        )
        parser.add_argument("--email", default="")

    def handle(self, *args: object, **options: object) -> None:
        username = str(options["username"])
        password_env = str(options["password_env"])
        if password_env:
            password = os.environ.get(password_env, "")
            if not password:
                raise CommandError(f"{password_env} is empty or not set.")
        else:
            password = _prompt_password(username)
        with transaction.atomic():
            user, created = get_user_model().objects.get_or_create(
                username=username, defaults={"email": str(options["email"])}
            )
            user.set_password(password)
            user.save()
            user.groups.set([Group.objects.get(name=ROLES[str(options["role"])])])
        verb = "Created" if created else "Updated"
        self.stdout.write(f"{verb} {username} with role {options['role']}.")


def _prompt_password(username: str) -> str:
    # Without a terminal (a script, CI, `docker exec` without -t) getpass would read stdin and
    # end in EOFError; say how to give the password instead.
    no_terminal = CommandError(
        "No terminal to prompt for a password: set it in an environment variable and pass "
        "--password-env VARIABLE."
    )
    if not sys.stdin.isatty():
        raise no_terminal
    try:
        password = getpass.getpass(f"Password for {username}: ")
    except EOFError:
        raise no_terminal from None
    if not password:
        raise CommandError("A password is required.")
    return password
