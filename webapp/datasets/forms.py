"""The upload form. It checks only what can be checked without opening the file (a name, a
.zip, the size): the archive itself is examined by the worker."""

from __future__ import annotations

from django import forms
from django.conf import settings
from django.core.files.uploadhandler import FileUploadHandler, StopUpload

from .services import format_bytes


class DatasetUploadForm(forms.Form):
    name = forms.CharField(max_length=200, help_text="How the dataset is listed.")
    archive = forms.FileField(
        label="Zip archive",
        help_text=(
            "train/, val/ and test/ folders of class folders, or plain class folders "
            "(split 64/16/20 into train/val/test for you). PNG or JPEG images."
        ),
    )
    is_public = forms.BooleanField(
        required=False,
        label="Share with everyone",
        help_text="Once ready, every logged-in user can see it and train on it.",
    )
    split_seed = forms.IntegerField(
        required=False,
        initial=0,
        min_value=0,
        max_value=2**31 - 1,
        label="Split seed",
        help_text="Seed of the class split, for plain class folders only.",
    )

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        limit = format_bytes(settings.DATASET_MAX_UPLOAD_BYTES)
        self.fields["archive"].help_text += f" At most {limit}."
        self.fields["archive"].widget.attrs["accept"] = ".zip,application/zip"

    def clean_archive(self):
        archive = self.cleaned_data["archive"]
        if not archive.name.lower().endswith(".zip"):
            raise forms.ValidationError("Upload a .zip file.")
        limit = settings.DATASET_MAX_UPLOAD_BYTES
        if archive.size > limit:
            raise forms.ValidationError(f"The file is larger than the {format_bytes(limit)} limit.")
        return archive

    def clean_split_seed(self) -> int:
        seed = self.cleaned_data.get("split_seed")
        return 0 if seed is None else seed


class SizeLimitUploadHandler(FileUploadHandler):
    """First in the chain of upload handlers: stops receiving a file as soon as it passes
    `limit` bytes, so an oversize upload is never written to a temporary file in full.
    `exceeded` tells the view to answer 413."""

    def __init__(self, limit: int, request=None) -> None:
        super().__init__(request)
        self.limit = limit
        self.exceeded = False

    def receive_data_chunk(self, raw_data: bytes, start: int) -> bytes:
        if start + len(raw_data) > self.limit:
            self.exceeded = True
            # connection_reset=False: Django reads (and drops) the rest of the body, bounded by
            # the Content-Length the view already checked, so the browser gets our answer.
            raise StopUpload(connection_reset=False)
        return raw_data

    def file_complete(self, file_size: int) -> None:
        return None  # the next handler builds the file
