"""The authentication backend (AUTHENTICATION_BACKENDS): Django's ModelBackend, with the
logged-in user read by one raw query.

Django asks the backend for the session's user on every page a logged-in user opens, and
ModelBackend builds that SELECT through the ORM each time, which costs several times what
the database takes to answer it; here the SQL is written once. Logging in and permissions are
ModelBackend's own.
"""

from __future__ import annotations

import functools

from django.contrib.auth import get_user_model
from django.contrib.auth.backends import ModelBackend
from django.core.exceptions import ValidationError
from django.db import connection


@functools.cache
def _user_sql() -> str:
    """A user's row (every column); parameter: the user's primary key."""
    quote = connection.ops.quote_name
    meta = get_user_model()._meta
    return f"SELECT * FROM {quote(meta.db_table)} WHERE {quote(meta.pk.column)} = %s"


def _user_pk(user_id):
    """`user_id` as the user table's primary key, or None if it cannot be one (the ORM turns
    such a lookup into "no such user"; raw SQL would send it to the database)."""
    pk = get_user_model()._meta.pk
    try:
        value = pk.to_python(user_id)
    except (ValidationError, TypeError, ValueError):
        return None
    if isinstance(value, int):
        low, high = connection.ops.integer_field_range(pk.get_internal_type())
        if not low <= value <= high:
            return None
    return value


class RawModelBackend(ModelBackend):
    def get_user(self, user_id):
        """The user if they exist and may log in (ModelBackend's rule: active), else None."""
        pk = _user_pk(user_id)
        if pk is None:
            return None
        user = next(iter(get_user_model()._default_manager.raw(_user_sql(), [pk])), None)
        return user if user is not None and self.user_can_authenticate(user) else None
