"""GET /api/presets: the paper's hyper-parameter presets, complete, with per-field help."""

from __future__ import annotations

from django.http import HttpRequest
from ninja import Router

from metatrain import PRESETS, Config

from .schemas import PresetsOut

router = Router()


@router.get("", response=PresetsOut, summary="The paper's presets (Appendix A)")
def list_presets(request: HttpRequest):
    return {
        "presets": [{"name": name, "config": config} for name, config in PRESETS.items()],
        "field_help": dict(Config.FIELD_HELP),
    }
