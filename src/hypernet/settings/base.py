"""The base of every settings model, the per-field surface marks, and the one sentence a refusal becomes.

Every family of settings is one pydantic model (``Field(ge=, le=)`` for limits, ``Literal`` for choices, help text
and default in one place). The CLI options, the HTTP request models, the web UI inputs and the README tables are
derived from those models; :class:`On` says how a field shows on each surface, and :func:`refusal` turns pydantic's
errors into the sentence every surface shows (the CLI with exit code 2, the API with a 422, the UI next to the
input).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, PrivateAttr, ValidationError
from pydantic.fields import FieldInfo

from hypernet.errors import HypernetError


@dataclass(frozen=True)
class On:
    """How one setting shows on each surface.

    ``cli``: the flag names (default ``--field-name``), or ``()`` when the command line has no such option (then
    ``why`` says why). ``ui``: the web UI's label, or ``None`` when the UI does not offer the field (``why``
    again). ``api``: whether HTTP requests may set it. ``expect``: how a refusal describes the valid values, when
    the bounds alone do not say it well (seeds: ``-1 (random) or 0 to 4294967295``).
    """

    cli: tuple[str, ...] | None = None
    ui: str | None = ""
    api: bool = True
    expect: str = ""
    why: str = ""

    def flags(self, name: str) -> tuple[str, ...]:
        return ("--" + name.replace("_", "-"),) if self.cli is None else self.cli


ON_DEFAULT = On()


class SettingsError(HypernetError):
    """A refused setting: one sentence naming the field, shown as is by the CLI (exit 2), API (422) and UI."""

    status = 422

    def __init__(self, message: str, field: str = "") -> None:
        super().__init__(message)
        self.field = field


class SettingsModel(BaseModel):
    """Finite numbers only, unknown keys ignored (A1111 clients send many), A1111 names and ours both accepted.

    Constructing one raises :class:`SettingsError` (a :class:`~hypernet.errors.HypernetError`) with one sentence;
    values that A1111 accepts but that need adjusting (a width of 65) are adjusted, and :attr:`warnings` says so.
    """

    model_config = ConfigDict(allow_inf_nan=False, extra="ignore", validate_by_name=True, validate_by_alias=True,
                              protected_namespaces=(), use_enum_values=False)
    _warnings: list[str] = PrivateAttr(default_factory=list)

    def __init__(self, /, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as e:
            raise refusal(e, type(self)) from None

    @classmethod
    def parse(cls, data: Mapping[str, Any]) -> Self:
        """Validate a JSON-like mapping (A1111 names or ours); nulls mean "the default", as in A1111's API."""
        return cls(**{k: v for k, v in data.items() if v is not None or _nullable(cls.model_fields.get(k))})

    @property
    def warnings(self) -> list[str]:
        """Adjustments made to accepted values (e.g. sizes floored to a multiple of 8), as sentences."""
        return list(self._warnings)

    def warn(self, message: str) -> None:
        self._warnings.append(message)

    @classmethod
    def surface(cls, name: str) -> On:
        """The :class:`On` mark of field ``name`` (the default mark when it has none)."""
        return surface_of(cls.model_fields[name])


def surface_of(info: FieldInfo) -> On:
    return next((m for m in info.metadata if isinstance(m, On)), ON_DEFAULT)


def _nullable(info: FieldInfo | None) -> bool:
    return info is not None and info.default is None


def public_name(model: type[BaseModel], name: str) -> str:
    """The name users know a field by: A1111's (the alias) where it has one."""
    info = model.model_fields.get(name)
    return info.alias if info is not None and info.alias else name


def _bounds(info: FieldInfo | None) -> tuple[Any, Any]:
    low = high = None
    for m in info.metadata if info is not None else ():
        low = getattr(m, "ge", None) if getattr(m, "ge", None) is not None else low
        low = getattr(m, "gt", None) if getattr(m, "gt", None) is not None and low is None else low
        high = getattr(m, "le", None) if getattr(m, "le", None) is not None else high
        high = getattr(m, "lt", None) if getattr(m, "lt", None) is not None and high is None else high
    return low, high


def _shown(value: Any) -> str:
    if isinstance(value, str) and _numeric(value):
        return value.strip()  # command-line numbers arrive as text; show them as typed
    if isinstance(value, str):
        return repr(value[:60] + ("..." if len(value) > 60 else ""))
    text = repr(value)
    return text[:60] + ("..." if len(text) > 60 else "")


def _numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return len(text) < 40


def sentence(errors: Sequence[Mapping[str, Any]], model: type[BaseModel] | None = None) -> tuple[str, str]:
    """``(field, sentence)`` for the first error of a pydantic error list (a model's or FastAPI's)."""
    error = errors[0]
    loc = [p for p in error.get("loc", ()) if p not in ("body", "query", "path")]
    name = str(loc[0]) if loc else ""
    fields = model.model_fields if model is not None else {}
    key = next((k for k, f in fields.items() if name in (k, f.alias)), None)
    info = fields.get(key) if key else None
    field = name or (public_name(model, key) if model is not None and key else "")  # as the user spelled it
    where = field + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc[1:])
    kind, ctx, value = error.get("type", ""), error.get("ctx") or {}, error.get("input")
    expect = surface_of(info).expect if info is not None else ""
    low, high = _bounds(info)
    if kind == "value_error":
        message = str(ctx.get("error", error.get("msg", "")))
        if not field:  # a check across fields: the sentence starts with the field it blames
            first = message.split(" ", 1)[0]
            return (first if first in fields or any(f.alias == first for f in fields.values()) else ""), message
        return field, message if message.startswith(field) else f"{where}: {message}"
    if kind == "missing":
        return field, f"{where} is missing; it is required."
    if kind == "finite_number":
        return field, f"{where} is {_shown(value)}; expected a finite number{_range_text(expect, low, high, ', ')}."
    if expect:
        return field, f"{where} is {_shown(value)}; expected {expect}."
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        return field, f"{where} is {_shown(value)}; expected {_range_text('', low, high, '')}."
    if kind == "literal_error":
        return field, f"{where} is {_shown(value)}; expected one of: {ctx.get('expected', '').replace(chr(39), '')}."
    if kind == "enum":
        return field, f"{where} is {_shown(value)}; expected one of: {ctx.get('expected', '').replace(chr(39), '')}."
    if kind.startswith(("int_", "float_", "bool_", "string_", "list_", "dict_")) or kind.endswith("_type"):
        what = {"int": "a whole number", "float": "a number", "bool": "true or false", "string": "text",
                "list": "a list", "dict": "an object"}.get(kind.split("_")[0], kind.replace("_", " "))
        if kind == "string_too_short":
            return field, f"{where} is empty; expected at least {ctx.get('min_length', 1)} character(s)."
        if kind == "string_too_long":
            return field, f"{where} is too long; expected at most {ctx.get('max_length')} characters."
        if kind in ("list_too_long", "too_long"):
            return field, f"{where} has too many entries; expected at most {ctx.get('max_length')}."
        if kind in ("too_short", "list_too_short"):
            return field, f"{where} has too few entries; expected at least {ctx.get('min_length')}."
        return field, f"{where} is {_shown(value)}; expected {what}."
    return field, f"{where} is {_shown(value)}; {error.get('msg', 'invalid')}."


def _range_text(expect: str, low: Any, high: Any, lead: str) -> str:
    if expect:
        return f"{lead}{expect}"
    if low is not None and high is not None:
        return f"{lead}a value from {low:g} to {high:g}" if isinstance(low, float) or isinstance(high, float) \
            else f"{lead}a value from {low} to {high}"
    if low is not None:
        return f"{lead}at least {low}"
    if high is not None:
        return f"{lead}at most {high}"
    return ""


def refusal(error: ValidationError, model: type[BaseModel] | None = None) -> SettingsError:
    """A pydantic ValidationError as the one-sentence :class:`SettingsError` every surface shows."""
    field, text = sentence(error.errors(include_url=False), model)
    return SettingsError(text, field)


def field_names(model: type[BaseModel], surface: str) -> Iterable[str]:
    """The fields a surface (``cli``, ``api`` or ``ui``) must offer, per their :class:`On` marks."""
    for name, info in model.model_fields.items():
        on = surface_of(info)
        if (surface == "cli" and on.flags(name)) or (surface == "ui" and on.ui is not None) or \
                (surface == "api" and on.api):
            yield name
