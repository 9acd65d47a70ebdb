"""Gradio inputs derived from the settings models: label, help, default, choices and bounds come from the field.

The web UI builds its inputs with :func:`component`, so a new field or a changed limit reaches the UI without
restating it; the UI may only narrow a slider's range (A1111's UI offers 1-150 steps where the API allows 500).
"""

from __future__ import annotations

import enum
from typing import Any

import gradio as gr
from pydantic import BaseModel

from hypernet.settings.base import surface_of
from hypernet.settings.cli import plain_type, choices


def _bounds(model: type[BaseModel], name: str) -> tuple[Any, Any]:
    low = high = None
    for m in model.model_fields[name].metadata:
        low = m.ge if getattr(m, "ge", None) is not None else low
        high = m.le if getattr(m, "le", None) is not None else high
    return low, high


def component(model: type[BaseModel], name: str, *, elem_id: str, number: bool = False, **overrides: Any) -> Any:
    """The Gradio input for ``model.name``: a dropdown for choices, a checkbox for flags, a slider for bounded
    numbers (``minimum``/``maximum``/``step`` overrides may narrow it), a number box for seeds and open ranges, a
    text box otherwise (lists such as layer structures are typed as ``"1, 2, 1"``). ``number`` asks for a number
    box where a slider would be awkward (step counts up to a million)."""
    info = model.model_fields[name]
    on = surface_of(info)
    if on.ui is None:
        raise ValueError(f"{model.__name__}.{name} is not offered by the UI ({on.why})")
    default = overrides.pop("value", info.get_default(call_default_factory=True))
    if isinstance(default, enum.Enum):
        default = default.value
    if isinstance(default, list):
        default = ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in default)
    common: dict[str, Any] = {"label": on.ui, "info": info.description, "elem_id": elem_id}
    kind = plain_type(info.annotation)
    options = choices(info.annotation) or (tuple(m.value for m in kind) if isinstance(kind, type) and
                                           issubclass(kind, enum.Enum) else ())
    if options:
        return gr.Dropdown(list(options), value=default, **common | overrides)
    if kind is bool:
        return gr.Checkbox(value=bool(default), **common | overrides)
    low, high = _bounds(model, name)
    if kind in (int, float) and low is not None and high is not None and not on.expect and not number:
        step = overrides.pop("step", 1 if kind is int else 0.01)
        minimum = max(low, overrides.pop("minimum", low))
        maximum = min(high, overrides.pop("maximum", high))
        return gr.Slider(minimum, maximum, value=default, step=step, **common | overrides)
    if kind in (int, float):
        return gr.Number(value=default, precision=0 if kind is int else None, minimum=low, maximum=high,
                         **common | overrides)
    return gr.Textbox(value="" if default is None else str(default), **common | overrides)


def ui_fields(model: type[BaseModel]) -> list[str]:
    """The fields the UI offers, in the model's order."""
    return [name for name, info in model.model_fields.items() if surface_of(info).ui is not None]
