"""The session engine (SESSION_ENGINE): Django's database sessions, read with one raw query.

Every page a logged-in user opens reads their session first. Django's engine builds that
SELECT through the ORM on every request, which costs several times what the database takes
to answer it; here the SQL is written once. Saving, creating and deleting sessions are
Django's own.
"""

from __future__ import annotations

import functools
import logging

from django.conf import settings
from django.contrib.auth import BACKEND_SESSION_KEY
from django.contrib.sessions.backends import db
from django.core.exceptions import SuspiciousOperation
from django.db import connection
from django.utils import timezone

# The backend that logged a session in is stored in it, and Django refuses a session whose
# backend is no longer in AUTHENTICATION_BACKENDS. Sessions made before RawModelBackend
# replaced ModelBackend (and the sign-up view's login, which names ModelBackend) carry
# Django's path: `load` reads it as ours, which is a drop-in replacement for it.
DJANGO_MODEL_BACKEND = "django.contrib.auth.backends.ModelBackend"
RAW_MODEL_BACKEND = "webapp.accounts.backends.RawModelBackend"


@functools.cache
def _session_sql(model) -> str:
    """A live session's row; parameters: its key, the current time."""
    quote = connection.ops.quote_name
    meta = model._meta
    columns = ", ".join(quote(field.column) for field in meta.concrete_fields)
    expire_date = quote(meta.get_field("expire_date").column)
    return (
        f"SELECT {columns} FROM {quote(meta.db_table)} "
        f"WHERE {quote(meta.pk.column)} = %s AND {expire_date} > %s"
    )


class SessionStore(db.SessionStore):
    def _get_session_from_db(self):
        """The session's row if it exists and has not expired, else None (forgetting the key,
        so that a save makes a new session), as Django's database engine does."""
        try:
            if self.session_key is None:
                raise self.model.DoesNotExist
            now = connection.ops.adapt_datetimefield_value(timezone.now())
            found = self.model.objects.raw(_session_sql(self.model), [self.session_key, now])
            session = next(iter(found), None)
            if session is None:
                raise self.model.DoesNotExist
            return session
        except (self.model.DoesNotExist, SuspiciousOperation) as e:
            if isinstance(e, SuspiciousOperation):
                logger = logging.getLogger(f"django.security.{e.__class__.__name__}")
                logger.warning(str(e))
            self._session_key = None
            return None

    def load(self) -> dict:
        return _read_model_backend_as_ours(super().load())

    async def aload(self) -> dict:
        return _read_model_backend_as_ours(await super().aload())


def _read_model_backend_as_ours(data: dict) -> dict:
    """Only in memory: the session is written back with our path if it changes anyway."""
    if (
        data.get(BACKEND_SESSION_KEY) == DJANGO_MODEL_BACKEND
        and RAW_MODEL_BACKEND in settings.AUTHENTICATION_BACKENDS
    ):
        data[BACKEND_SESSION_KEY] = RAW_MODEL_BACKEND
    return data
