"""`manage.py create_api_token <username> <name>`: issue an API token and print it once.

Only the token's SHA-256 hash is stored, so this output is the one chance to copy it. Revoke a
token with `ApiToken.revoke()` (e.g. from the admin or a shell).
"""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from webapp.accounts.models import ApiToken


class Command(BaseCommand):
    help = "Create an API token for a user and print the raw token (shown only this once)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("username", help="the user the token acts as")
        parser.add_argument("name", help="what the token is for, e.g. 'laptop script'")

    def handle(self, *args, username: str, name: str, **options) -> None:
        name = name.strip()
        if not name or len(name) > 100:
            raise CommandError("The token name must be 1 to 100 characters.")
        User = get_user_model()
        try:
            user = User.objects.get(**{User.USERNAME_FIELD: username})
        except User.DoesNotExist:
            raise CommandError(f"No user named {username!r}.") from None
        if not user.is_active:
            raise CommandError(f"User {username!r} is inactive; its tokens would not work.")
        token, raw = ApiToken.issue(user, name)
        self.stderr.write(
            f"Token {token.name!r} ({token.prefix}...) for {username}. Copy it now: "
            "it is stored only as a hash and cannot be shown again."
        )
        self.stdout.write(raw)
