"""What ``hypernet preprocess`` should do: :class:`~hypernet.settings.preprocess.PreprocessSettings` (every option,
its limits and A1111's name, defined once), checked once so the workers never meet a bad value."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hypernet.errors import HypernetError
from hypernet.settings.base import field_names
from hypernet.settings.preprocess import (
    DEFAULT_BLIP_MODEL,
    DEFAULT_TAGGER_MODEL,
    ExistingCaption,
    Objective,
    PreprocessSettings,
)

CLAMPED = {"split_threshold": (0.0, 1.0), "overlap_ratio": (0.0, 0.9)}
__all__ = ["DEFAULT_BLIP_MODEL", "DEFAULT_TAGGER_MODEL", "ExistingCaption", "Objective", "PreprocessOptions"]


class PreprocessOptions(PreprocessSettings):
    """Every option of A1111's v1.6 "Preprocess images" tab and its later Extras scripts, with their defaults.

    Field names follow the CLI flags; :meth:`from_a1111` accepts A1111's own parameter names. The enum fields
    also take their string values (``existing_caption="copy"``), as JSON requests carry them.
    """

    @classmethod
    def from_a1111(cls, params: Mapping[str, Any]) -> PreprocessOptions:
        """Options from the keyword arguments of A1111's v1.6 ``preprocess`` (the body of ``POST /sdapi/v1/preprocess``),
        plus hypernet's own request fields by name.

        ``id_task``, ``process_src`` and ``process_dst`` are accepted and ignored; like A1111, the split threshold
        and overlap ratio are clamped, and values left as None keep their defaults.
        """
        known = {"id_task", "process_src", "process_dst"}
        for name in field_names(cls, "api"):
            known.add(cls.model_fields[name].alias or name)
            known.add(name)
        for key in params:
            if key not in known:
                raise HypernetError(f"{key!r} is not a parameter of A1111's preprocess")
        values = {k: v for k, v in params.items() if k not in ("id_task", "process_src", "process_dst")}
        for key, (low, high) in CLAMPED.items():  # A1111 clamps these two instead of refusing them
            if isinstance(values.get(key), (int, float)) and values[key] == values[key]:
                values[key] = min(max(float(values[key]), low), high)
        return cls.parse(values)
