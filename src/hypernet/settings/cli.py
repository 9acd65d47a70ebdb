"""Typer commands derived from settings models: one option per field, named, typed, bounded and explained by it.

Why a small typer adapter rather than pydantic-settings' CLI, cyclopts, tyro or jsonargparse: hypernet's command
line is already typer (rich help, ``--debug``, one-sentence errors, shared commands such as ``serve`` written by
hand), and those libraries each bring their own parser, help layout and error style for a part of the commands.
The adapter is ~100 lines: it reads each field's type, default, help and :class:`~hypernet.settings.base.On` mark,
writes an ``inspect.Signature`` typer understands, and validates the collected values with the model itself, so a
bad value is the same sentence on the command line as over HTTP (exit code 2, through ``hypernet.cli.main``).

Every option defaults to "not given" (``None``): the model's default applies, and ``--help`` shows it.
"""

from __future__ import annotations

import inspect
import os
import sys
import types
import typing
import warnings
from collections.abc import Callable, Sequence
from typing import Annotated, Any, Literal, Optional, Union

import typer
from pydantic.fields import FieldInfo
from rich.console import Console

from hypernet.errors import HypernetError
from hypernet.settings.base import SettingsModel, surface_of


def is_argument(flags: Sequence[str]) -> bool:
    """``("NAME",)`` marks a positional argument; ``("--x", ...)`` an option."""
    return bool(flags) and not flags[0].startswith("-")


def plain_type(annotation: Any) -> Any:
    """The field's type without Optional/Annotated wrappers."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (Union, types.UnionType):
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            annotation = args[0] if len(args) == 1 else str
        else:
            return annotation


def cli_type(annotation: Any) -> type:
    """What click parses: bool, int and float as themselves, everything else (lists, choices) as text."""
    plain = plain_type(annotation)
    if plain in (bool, int, float):
        return plain
    return str


def choices(annotation: Any) -> tuple[Any, ...]:
    plain = plain_type(annotation)
    return typing.get_args(plain) if typing.get_origin(plain) is Literal else ()


def bounds_text(info: FieldInfo) -> str:
    low = high = None
    for m in info.metadata:
        low = getattr(m, "ge", low) if getattr(m, "ge", None) is not None else low
        high = getattr(m, "le", high) if getattr(m, "le", None) is not None else high
    if low is not None and high is not None:
        return f" Range: {low:g} to {high:g}." if isinstance(low, float) or isinstance(high, float) else \
            f" Range: {low} to {high}."
    return ""


def help_text(info: FieldInfo) -> str:
    text = (info.description or "").strip()
    options = choices(info.annotation)
    if options:
        text += " One of: " + ", ".join(str(o) for o in options) + "."
    return text + bounds_text(info)


def _default_text(info: FieldInfo) -> str | bool:
    default = info.get_default(call_default_factory=True)
    if default is None or default == "":
        return False
    if isinstance(default, bool):
        return False
    if isinstance(default, list):
        return ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in default)
    return str(default)


def model_parameters(model: type[SettingsModel], *, optional: Sequence[str] = (),
                     exclude: Sequence[str] = (), panel: str | None = None) -> list[inspect.Parameter]:
    """One typer parameter per field the command line offers (its :class:`On` mark has flags)."""
    params = []
    for name, info in model.model_fields.items():
        flags = surface_of(info).flags(name)
        if not flags or name in exclude:
            continue
        kind = cli_type(info.annotation)
        help = help_text(info)
        if is_argument(flags):
            required = name not in optional
            spec: Any = typer.Argument(metavar=flags[0], help=help, show_default=False)
            annotation = Annotated[kind if required else Optional[kind], spec]
            default = inspect.Parameter.empty if required else None
        else:
            spec = typer.Option(*flags, help=help, show_default=_default_text(info), rich_help_panel=panel)
            annotation, default = Annotated[Optional[kind], spec], None
        params.append(inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=annotation,
                                        default=default))
    return params


def field_option(model: type[SettingsModel], name: str) -> Any:
    """The typer option of one field, for a command written by hand: ``Annotated[Path, field_option(Folders,
    "lora_dir")] = field_default(Folders, "lora_dir")`` (flags and help from the field; a default read from the
    environment is not shown as a value: the help names the variable)."""
    info = model.model_fields[name]
    return typer.Option(*surface_of(info).flags(name), help=help_text(info),
                        show_default=info.default_factory is None)


def field_default(model: type[SettingsModel], name: str, kind: Callable[[Any], Any] | None = None) -> Any:
    """The field's default, converted with ``kind`` (e.g. ``Path``) when given. A default the model makes when it is
    built (e.g. from ``$HYPERNET_LORA_DIR``) stays a function, which click calls when the command runs, not when
    the command is defined."""
    info = model.model_fields[name]
    convert = kind or (lambda value: value)
    factory = info.default_factory
    if factory is not None:
        return lambda: convert(factory())  # type: ignore[call-arg]
    return convert(info.default)


def option(name: str, kind: Any, default: Any, *flags: str, help: str, **extra: Any) -> inspect.Parameter:
    """A command-line-only option (a path, a device) for :func:`command`'s ``extra``."""
    spec = typer.Option(*flags, help=help, **extra)
    return inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Annotated[kind, spec],
                             default=default)


def argument(name: str, kind: Any, default: Any = inspect.Parameter.empty, *, help: str,
             metavar: str | None = None) -> inspect.Parameter:
    spec = typer.Argument(help=help, metavar=metavar or name.upper(), show_default=False)
    return inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Annotated[kind, spec],
                             default=default)


def command(model: type[SettingsModel], run: Callable[..., Any], *, extra: Sequence[inspect.Parameter] = (),
            optional: Sequence[str] = (), exclude: Sequence[str] = (),
            before: Callable[[dict[str, Any], dict[str, Any]], None] | None = None,
            doc: str | None = None) -> Callable[..., Any]:
    """A typer command: the model's options plus ``extra``; it validates the given values with ``model`` and calls
    ``run(settings, **extra_values)``. ``before(values, extras)`` may rewrite both first (e.g. map ``--size WxH``
    onto width and height)."""
    fields = model_parameters(model, optional=optional, exclude=exclude)
    field_names = {p.name for p in fields}
    params = [*fields, *extra]
    params.sort(key=lambda p: p.default is not inspect.Parameter.empty)  # required ones first, order kept

    def invoke(**kwargs: Any) -> Any:
        values = {k: v for k, v in kwargs.items() if k in field_names and v is not None}
        extras = {k: v for k, v in kwargs.items() if k not in field_names}
        if before is not None:
            before(values, extras)
        settings = model.parse(values)
        return run(settings, **extras)

    invoke.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    invoke.__annotations__ = {p.name: p.annotation for p in params}
    invoke.__doc__ = doc or run.__doc__
    invoke.__name__ = run.__name__.lstrip("_")
    return invoke


def run_app(app: typer.Typer, argv: Sequence[str] | None, prog_name: str) -> None:
    """Run a typer app as a command: usage mistakes and user errors print one line and exit 2 (``--debug``, before
    or after the command name, shows the traceback of a user error instead); Ctrl-C exits 130."""
    # Notes every run would print and no user can act on: transformers' "requires torchvision" and "sequence length
    # is longer than" (prompts are chunked as A1111 does), torchsde's float rounding at interval ends.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    warnings.filterwarnings("ignore", message="Should have t[ab]")
    args, debug = _split_debug(list(sys.argv[1:] if argv is None else argv))
    try:
        code = app(args=args, prog_name=prog_name, standalone_mode=False)
    except HypernetError as e:
        if debug:
            raise
        say(f"error: {e}", err=True)
        sys.exit(2)
    except typer.Abort:
        say("interrupted", err=True)
        sys.exit(130)
    except CLICK_ERROR as e:
        if NO_ARGS is not None and isinstance(e, NO_ARGS):
            sys.exit(2)  # the help was printed already
        command = e.ctx.command_path if getattr(e, "ctx", None) is not None else prog_name
        say(f"error: {e.format_message()} (see `{command} --help`)", err=True)
        sys.exit(e.exit_code)
    if isinstance(code, int) and code != 0:  # typer.Exit(1) and the like; success simply returns
        sys.exit(code)


def console(*, stderr: bool = False) -> Console:
    """A rich console for output that holds user text (prompts, names, paths): no emoji codes (``<lora:x:1>`` would
    print as ``<lora❌1>``) and no highlighting; pass ``markup=False`` (or escape) where user text is printed."""
    return Console(stderr=stderr, soft_wrap=True, highlight=False, emoji=False)


def say(text: str, *, err: bool = False) -> None:
    """Print text as it is: user text (prompts, names, paths) may hold ``[...]`` or ``:x:`` that rich would read."""
    console(stderr=err).print(text, markup=False)


def _split_debug(args: list[str]) -> tuple[list[str], bool]:
    """``--debug`` anywhere before ``--`` (before or after the command name) turns tracebacks on."""
    end = args.index("--") if "--" in args else len(args)
    debug = "--debug" in args[:end]
    return [a for i, a in enumerate(args) if i >= end or a != "--debug"], debug


def _subclass(base: type, name: str) -> type | None:
    for sub in base.__subclasses__():
        found = sub if sub.__name__ == name else _subclass(sub, name)
        if found is not None:
            return found
    return None


# typer >= 0.29 bundles its own click (typer._click); older typers use the click package. Its exception classes are
# found through typer's public BadParameter, so usage errors are caught whichever click typer runs on.
CLICK_ERROR: type[Exception] = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")
NO_ARGS = _subclass(CLICK_ERROR, "NoArgsIsHelpError")  # click >= 8.2: help was shown for a bare command
