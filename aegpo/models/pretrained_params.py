"""params.yaml `model.pretrained`: loading real diffusers pipelines (SD3/SD3.5, FLUX.1)."""

from __future__ import annotations

from pydantic import Field

from aegpo.config_base import Section


class PretrainedParams(Section):
    path: str = Field("", description="Local folder or hub id of a diffusers pipeline (kinds sd3, flux); unused by tiny_mmdit.")
