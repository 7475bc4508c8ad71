"""Project-wide request checks that belong to no single app."""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest
from django.shortcuts import render

NUL = "\x00"
API_PREFIX = "/api/"
NUL_MESSAGE = "NUL characters are not allowed in the URL or the query string."


class RejectNulCharactersMiddleware:
    """Answer 400 to a request whose path or query string holds a NUL character.

    PostgreSQL refuses NUL in text parameters with an error, so `?q=%00` on any page that
    filters by text would be a 500. Form and JSON bodies are not read here (reading them would
    fix the upload handlers too early): their fields refuse NUL themselves (Django's CharField,
    the API's schemas). The API (/api/) is left to its own schemas too, which answer with its
    documented 422 naming the parameter.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if not request.path_info.startswith(API_PREFIX) and _has_nul(request):
            return HttpResponseBadRequest(NUL_MESSAGE, content_type="text/plain; charset=utf-8")
        return self.get_response(request)


def _has_nul(request: HttpRequest) -> bool:
    if NUL in request.path_info:
        return True
    return any(
        NUL in key or any(NUL in value for value in values) for key, values in request.GET.lists()
    )


class MethodNotAllowedPageMiddleware:
    """Give the site's own page (templates/405.html) to a page answered 405 with an empty body.

    Django has no handler405: `require_POST` and friends answer with nothing but an `Allow`
    header, so following a link to a POST-only address (GET /runs/N/cancel/) showed a blank
    page. The API (/api/) keeps its own JSON answers.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if (
            response.status_code == 405
            and not request.path_info.startswith(API_PREFIX)
            and not getattr(response, "streaming", False)
            and not response.content
        ):
            page = render(
                request,
                "405.html",
                {"allowed": response.get("Allow", "")},
                status=405,
            )
            if response.has_header("Allow"):
                page["Allow"] = response["Allow"]
            return page
        return response
