"""The errors the service layer raises, shared by the form, the API and the management commands.

`ServiceError` is one refusal (a field, or None for the request as a whole). `ValidationFailed`
carries every field error of a request at once, so neither front door makes a user fix one
field at a time. `QuotaExceeded` is a refusal because of what the user already has, not because
of what they sent: it names the limit (its setting), their current usage and what to do.
"""

from __future__ import annotations

from collections.abc import Iterable

FieldError = tuple[str | None, str]


class ServiceError(ValueError):
    """A request that cannot be carried out; `field` names the input at fault, if any."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class ValidationFailed(ServiceError):
    """Every field error of one request, in the order found: `errors` is a list of
    (field or None, message), at most one message per field.

    `field` and `str()` are those of the first error, so code written for a single
    ServiceError still reads something true."""

    def __init__(self, errors: Iterable[FieldError]) -> None:
        self.errors: list[FieldError] = list(errors)
        if not self.errors:
            raise ValueError("ValidationFailed needs at least one error")
        field, message = self.errors[0]
        super().__init__(message, field)

    def __str__(self) -> str:
        if len(self.errors) == 1:
            return self.errors[0][1]
        return "; ".join(f"{field}: {message}" if field else message for field, message in self)

    def __iter__(self):
        return iter(self.errors)


class QuotaExceeded(ServiceError):
    """A per-user limit of this server would be passed. `quota` is the setting's name, `limit`
    its value, `usage` what the user has now (in the limit's unit), `requested` what the
    refused request would add."""

    def __init__(
        self, message: str, *, quota: str, limit: int, usage: int, requested: int = 0
    ) -> None:
        super().__init__(message)
        self.quota = quota
        self.limit = limit
        self.usage = usage
        self.requested = requested


class ErrorList:
    """Collects field errors, keeping the first message of each field (the one to fix first;
    a second one on the same field is usually a consequence)."""

    def __init__(self) -> None:
        self.errors: list[FieldError] = []

    def add(self, field: str | None, message: str) -> None:
        if field is None or not self.has(field):
            self.errors.append((field, message))

    def extend(self, errors: Iterable[FieldError]) -> None:
        for field, message in errors:
            self.add(field, message)

    def has(self, field: str) -> bool:
        return any(f == field for f, _ in self.errors)

    def __bool__(self) -> bool:
        return bool(self.errors)

    def raise_if_any(self) -> None:
        if self.errors:
            raise ValidationFailed(self.errors)
