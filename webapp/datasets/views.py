"""Pages for uploaded datasets: my datasets and public ones, upload, detail, delete.

Every page needs a logged-in user and fetches datasets through `access`. The upload view only
stores the zip and enqueues its processing; an oversize upload is refused from its
Content-Length before the body is read, and a size-limit upload handler stops one that lied
about it, so neither is written to storage. An upload that would pass the user's dataset quotas
(QUOTA_MAX_DATASETS, QUOTA_MAX_DATASET_BYTES) is refused before anything is stored, and checked
again with the user's row locked in the transaction that saves the dataset (the zip is stored
between the two, outside any transaction).
"""

from __future__ import annotations

from functools import partial

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.csrf import csrf_exempt, csrf_protect
from django.views.decorators.http import require_POST

from webapp.experiments import quotas
from webapp.experiments.errors import QuotaExceeded

from . import services
from .access import can_change, get_dataset_for_user
from .forms import DatasetUploadForm, SizeLimitUploadHandler
from .models import UserDataset

# Room for the form's other fields and the multipart boundaries around the file.
FORM_OVERHEAD_BYTES = 64 * 1024


@login_required
def dataset_list(request: HttpRequest) -> HttpResponse:
    mine = UserDataset.objects.filter(owner=request.user)
    shared = (
        UserDataset.objects.filter(is_public=True, status=UserDataset.Status.READY)
        .exclude(owner=request.user)
        .select_related("owner")
    )
    return render(request, "datasets/dataset_list.html", {"mine": mine, "shared": shared})


@login_required
@csrf_exempt  # only so the size limit can be installed first; _upload_post checks the token
def dataset_upload(request: HttpRequest) -> HttpResponse:
    if request.method != "POST":
        return _form_page(request, DatasetUploadForm(initial={"split_seed": 0}))
    limit = settings.DATASET_MAX_UPLOAD_BYTES
    try:
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        declared = 0
    if declared > limit + FORM_OVERHEAD_BYTES:
        return _too_large(request, DatasetUploadForm(initial={"split_seed": 0}))
    # Upload handlers must be changed before the body is parsed, which the CSRF check does:
    # hence csrf_exempt above and csrf_protect on the part that reads the form.
    handler = SizeLimitUploadHandler(limit, request)
    request.upload_handlers.insert(0, handler)
    return _upload_post(request, handler)


@csrf_protect
def _upload_post(request: HttpRequest, handler: SizeLimitUploadHandler) -> HttpResponse:
    form = DatasetUploadForm(request.POST, request.FILES)
    if handler.exceeded:
        return _too_large(request, DatasetUploadForm(initial=request.POST.dict()))
    if form.is_valid():
        data = form.cleaned_data
        check = partial(quotas.check_dataset_quotas, request.user, data["archive"].size)
        try:
            with transaction.atomic():
                check()  # before the zip is stored: nothing to undo
            # Then again, with the row locked, in the transaction that saves the dataset (two
            # uploads at once); the zip is stored between the two, outside any transaction.
            dataset = services.create_dataset(
                request.user,
                name=data["name"],
                archive=data["archive"],
                is_public=data["is_public"],
                split_seed=data["split_seed"],
                check=check,
            )
        except QuotaExceeded as err:
            form.add_error(None, str(err))
        except services.DatasetError as err:
            form.add_error(err.field if err.field in form.fields else None, str(err))
        else:
            messages.success(
                request,
                "Upload received. It is being checked in the background; this page "
                "shows the result.",
            )
            return redirect(dataset)
    return _form_page(request, form)


def _too_large(request: HttpRequest, form: DatasetUploadForm) -> HttpResponse:
    limit = services.format_bytes(settings.DATASET_MAX_UPLOAD_BYTES)
    error = f"The file is larger than the {limit} limit."
    return _form_page(request, form, status=413, error=error)


def _form_page(
    request: HttpRequest, form: DatasetUploadForm, status: int = 200, error: str = ""
) -> HttpResponse:
    context = {
        "form": form,
        "error": error,
        "max_upload": services.format_bytes(settings.DATASET_MAX_UPLOAD_BYTES),
        "min_classes": settings.DATASET_MIN_CLASSES_PER_SPLIT,
        "min_images": settings.DATASET_MIN_IMAGES_PER_CLASS,
        "quota": _quota_line(request.user),
    }
    return render(request, "datasets/dataset_form.html", context, status=status)


def _quota_line(user) -> str:
    """What the user has of their dataset quotas, for the upload page ("" when unlimited)."""
    if quotas.exempt(user):
        return ""
    usage = quotas.dataset_usage(user)
    parts = []
    if settings.QUOTA_MAX_DATASETS:
        parts.append(f"{usage.datasets} of {settings.QUOTA_MAX_DATASETS} datasets")
    if settings.QUOTA_MAX_DATASET_BYTES:
        used = services.format_bytes(usage.bytes)
        parts.append(f"{used} of {services.format_bytes(settings.QUOTA_MAX_DATASET_BYTES)}")
    return f"You use {' and '.join(parts)}." if parts else ""


@login_required
def dataset_detail(request: HttpRequest, pk: int) -> HttpResponse:
    dataset = get_dataset_for_user(request.user, pk)
    context = {
        "dataset": dataset,
        "can_change": can_change(request.user, dataset),
        "splits": [
            (name, len(dataset.class_split.get(name, [])), dataset.class_split.get(name, []))
            for name in ("train", "val", "test")
        ],
    }
    return render(request, "datasets/dataset_detail.html", context)


@login_required
@require_POST
def dataset_delete(request: HttpRequest, pk: int) -> HttpResponse:
    dataset = get_dataset_for_user(request.user, pk, for_change=True)
    name = dataset.name
    try:
        services.delete_dataset(dataset)
    except services.DatasetError as err:
        messages.error(request, str(err))
        return redirect(dataset)
    messages.success(request, f"Deleted dataset {name!r} and its files.")
    return redirect("dataset-list")
