"""GET /api/presets: the paper's hyper-parameter presets, complete, with per-field help.

Without `data_dir`: a path on the server, which the API never shows and never accepts."""

from __future__ import annotations

from django.http import HttpRequest
from ninja import Router

from metatrain import PRESETS, Config
from webapp.experiments.access import PRIVATE_CONFIG_KEYS, visible_config

from .schemas import PresetsOut

router = Router()


@router.get("", response=PresetsOut, summary="The paper's presets (Appendix A)")
def list_presets(request: HttpRequest):
    return {
        "presets": [
            {"name": name, "config": visible_config(config)} for name, config in PRESETS.items()
        ],
        "field_help": {k: v for k, v in Config.FIELD_HELP.items() if k not in PRIVATE_CONFIG_KEYS},
    }
