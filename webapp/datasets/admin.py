"""Admin for uploaded datasets: for staff to inspect them. States are the worker's to change, so
they are read-only here; deleting goes through the same service as the page's button (folder
and upload removed, refused while a run uses the dataset)."""

from __future__ import annotations

from django.contrib import admin, messages

from . import services
from .models import UserDataset


@admin.register(UserDataset)
class UserDatasetAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "name",
        "owner",
        "status",
        "is_public",
        "train_classes",
        "val_classes",
        "test_classes",
        "images",
        "created_at",
    )
    list_filter = ("status", "is_public", "layout")
    search_fields = ("name", "owner__username", "upload_name", "reason")
    raw_id_fields = ("owner",)
    readonly_fields = (
        "status",
        "reason",
        "upload",
        "upload_name",
        "upload_bytes",
        "layout",
        "split_seed",
        "class_split",
        "train_classes",
        "val_classes",
        "test_classes",
        "images",
        "uncompressed_bytes",
        "folder",
        "attempts",
        "created_at",
        "dispatched_at",
        "started_at",
        "finished_at",
    )
    actions = ["delete_with_files"]

    def has_add_permission(self, request) -> bool:
        return False  # datasets come from the upload page, which stores and enqueues them

    def get_actions(self, request):
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)  # would leave folders behind
        return actions

    def delete_model(self, request, obj: UserDataset) -> None:
        try:
            services.delete_dataset(obj)
        except services.DatasetError as err:
            messages.error(request, str(err))

    @admin.action(description="Delete selected datasets with their files")
    def delete_with_files(self, request, queryset) -> None:
        deleted = 0
        for dataset in queryset:
            try:
                services.delete_dataset(dataset)
                deleted += 1
            except services.DatasetError as err:
                messages.error(request, f"{dataset.name}: {err}")
        if deleted:
            messages.success(request, f"Deleted {deleted} dataset(s) with their files.")
