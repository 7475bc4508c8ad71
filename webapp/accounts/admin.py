"""Admin for API tokens (staff see and revoke them, never read or mint a raw value) and for
failed logins (staff lift a lockout by deleting them)."""

from __future__ import annotations

from django.contrib import admin
from django.utils import timezone

from .forms import ThrottledAdminAuthenticationForm
from .models import ApiToken, LoginAttempt


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    list_display = ("name", "user", "prefix", "created_at", "last_used_at", "revoked_at")
    list_filter = ("revoked_at",)
    search_fields = ("name", "user__username", "prefix")
    readonly_fields = ("user", "token_hash", "prefix", "created_at", "last_used_at", "revoked_at")
    fields = ("name", *readonly_fields)
    actions = ["revoke_tokens"]

    def has_add_permission(self, request) -> bool:
        return False  # a raw token is shown once to its owner: issue from the profile page

    @admin.action(description="Revoke selected tokens")
    def revoke_tokens(self, request, queryset) -> None:
        count = queryset.filter(revoked_at__isnull=True).update(revoked_at=timezone.now())
        self.message_user(request, f"Revoked {count} token(s).")


@admin.register(LoginAttempt)
class LoginAttemptAdmin(admin.ModelAdmin):
    """Failed logins; deleting a username's rows lifts its lockout early."""

    list_display = ("username", "ip", "attempted_at")
    search_fields = ("username", "ip")
    readonly_fields = ("username", "ip", "attempted_at")

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


# /admin/login/ checks passwords too: it gets the same throttle as the site's login page.
admin.site.login_form = ThrottledAdminAuthenticationForm
