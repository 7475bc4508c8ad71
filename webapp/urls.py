"""URL routes. Each app owns its own urls module."""

from django.contrib import admin
from django.urls import include, path

from webapp.api.api import api

urlpatterns = [
    path("admin/", admin.site.urls),
    path("accounts/", include("webapp.accounts.urls")),
    path("api/", api.urls),
    path("datasets/", include("webapp.datasets.urls")),
    path("", include("webapp.experiments.urls")),
]
