"""Base class of every params.yaml section: unknown keys are errors, values are frozen."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    # allow_inf_nan=False: a NaN or inf lr, shift, clip range or reward weight would poison every weight
    # it touches; every float parameter must be finite.
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True, allow_inf_nan=False)
