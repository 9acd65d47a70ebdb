"""The settings models: one definition per family, its limits, and the surfaces derived from it."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import typer

from hypernet.cli import app
from hypernet.network.module import ACTIVATIONS, UNBUILDABLE_ACTIVATIONS, WIDTH_CHANGING_ACTIVATIONS
from hypernet.server.models import M
from hypernet.prepare.options import PreprocessOptions
from hypernet.server.hypernetworks import SERVER_ONLY_KEYS, TRAIN_KEYS
from hypernet.settings import CreateSettings, Folders, GenerateSettings, PreprocessSettings, SettingsError, TrainSettings
from hypernet.settings.serve import ServeSettings
from hypernet.settings.server import ServerOptions
from hypernet.settings.base import field_names
from hypernet.settings.cli import is_argument
from hypernet.settings.create import Activation
from hypernet.settings.limits import MAX_PIXELS, SEED_MAX


def _cli_params(command: str) -> dict[str, list[str]]:
    click_command = typer.main.get_command(app).commands[command]  # type: ignore[attr-defined]
    return {p.name: [*p.opts, *p.secondary_opts] for p in click_command.params}


FAMILIES = [CreateSettings, GenerateSettings, TrainSettings, PreprocessSettings, ServerOptions, Folders, ServeSettings]


@pytest.mark.parametrize(("model", "command"), [(CreateSettings, "create"), (GenerateSettings, "generate"),
                                                (TrainSettings, "train"), (PreprocessSettings, "preprocess"),
                                                (Folders, "generate"), (ServeSettings, "serve")])
def test_every_cli_field_is_an_option(model, command) -> None:
    params = _cli_params(command)
    options = {flag for flags in params.values() for flag in flags}
    for name in field_names(model, "cli"):
        flags = [f for flag in model.surface(name).flags(name) for f in flag.split("/")]
        if is_argument(flags):
            assert any(p.upper() == flags[0] or p == name for p in params), f"{model.__name__}.{name}: no argument"
        else:
            assert set(flags) <= options, f"{model.__name__}.{name} {flags} is missing from `hypernet {command}`"


def test_one_folder_option_means_the_same_everywhere() -> None:
    for command in ("create", "list", "generate", "serve", "train"):
        options = {flag for flags in _cli_params(command).values() for flag in flags}
        assert set(Folders.surface("hypernetwork_dir").flags("hypernetwork_dir")) <= options, command
    assert TrainSettings.model_fields["hypernetwork_dir"].description == Folders.model_fields["hypernetwork_dir"].description


def test_every_api_field_reaches_the_train_and_preprocess_endpoints() -> None:
    assert TRAIN_KEYS == set(field_names(TrainSettings, "api"))
    assert SERVER_ONLY_KEYS == {"model", "vae", "hypernetwork_dir", "templates_dir", "resume_from", "device"}
    for name in field_names(PreprocessSettings, "api"):
        alias = PreprocessSettings.model_fields[name].alias or name
        default = PreprocessSettings.model_fields[name].default
        assert getattr(PreprocessOptions.from_a1111({alias: default}), name) == default


@pytest.mark.parametrize("model", [M.StableDiffusionTxt2ImgProcessingAPI, M.StableDiffusionImg2ImgProcessingAPI])
def test_every_api_field_is_in_the_request_model(model) -> None:
    schema = model.model_json_schema()["properties"]
    for name in field_names(GenerateSettings, "api"):
        assert name in schema, f"GenerateSettings.{name} is missing from {model.__name__}"
        assert schema[name].get("description") == GenerateSettings.model_fields[name].description
    assert schema["steps"]["maximum"] == GenerateSettings.model_fields["steps"].metadata[1].le


def test_fields_left_off_a_surface_say_why() -> None:
    for model in FAMILIES:
        for name in model.model_fields:
            on = model.surface(name)
            if on.cli == () or on.ui is None or not on.api:
                assert on.why, f"{model.__name__}.{name} is left off a surface without a reason"


def test_activation_list_is_exactly_what_create_builds() -> None:
    buildable = {a for a in ACTIVATIONS if a not in UNBUILDABLE_ACTIVATIONS and a not in WIDTH_CHANGING_ACTIVATIONS}
    assert set(Activation.__args__) == buildable  # type: ignore[attr-defined]
    assert len(Activation.__args__) == len(set(Activation.__args__))  # type: ignore[attr-defined]


@pytest.mark.parametrize(("values", "message"), [
    ({"width": 100000, "height": 100000}, "width is 100000; expected a value from 8 to 8192."),
    ({"width": 4096, "height": 2048}, f"at most {MAX_PIXELS:,} pixels are allowed per image."),
    ({"seed": 99999999999999999999}, f"seed is 99999999999999999999; expected -1 (random) or a whole number from 0 to {SEED_MAX}."),
    ({"seed": -2}, "seed is -2; expected -1 (random)"),
    ({"cfg_scale": float("nan")}, "cfg_scale is nan; expected a finite number"),
    ({"cfg_scale": "inf"}, "cfg_scale is inf; expected a finite number"),
    ({"steps": 0}, "steps is 0; expected a value from 1 to 500."),
    ({"batch_size": 16, "n_iter": 100}, "batch_size x n_iter is 16x100"),
    ({"clip_skip": 0}, "clip_skip is 0"),
    ({"clip_skip": 50}, "clip_skip is 50"),
    ({"denoising_strength": 1.5}, "denoising_strength is 1.5"),
    ({"enable_hr": True, "width": 1024, "height": 1024, "hr_scale": 4}, "the hires size is 4096x4096"),
])
def test_generation_limits_are_sentences(values, message) -> None:
    with pytest.raises(SettingsError) as caught:
        GenerateSettings(**values)
    assert message in str(caught.value)


def test_a1111_accepted_values_stay_accepted() -> None:
    s = GenerateSettings(width=683, height=1024, denoising_strength=0, seed=SEED_MAX, subseed=-1)
    assert (s.width, s.height) == (680, 1024)
    assert s.warnings == ["width 683 is not a multiple of 8; using 680 (as A1111 does)."]
    assert GenerateSettings.parse({"steps": None, "seed": None}).steps == 20  # null means the default


@pytest.mark.parametrize(("values", "message"), [
    ({"name": ""}, "name is empty; expected at least 1 character(s)."),
    ({"name": "sub/x"}, "not a plain file name"),
    ({"name": "."}, "not a plain file name"),
    ({"name": "x", "enable_sizes": [65536]}, "enable_sizes[0] is 65536"),
    ({"name": "x", "enable_sizes": [4096, 4000, 3900]}, "parameters; at most"),
    ({"name": "x", "layer_structure": "1, 0.001, 1"}, "gives a layer of width 0"),
    ({"name": "x", "layer_structure": [1, math.inf, 1]}, "layer_structure[1] is inf"),
    ({"name": "x", "layer_structure": "1, nan, 1"}, "layer_structure[1] is nan"),
    ({"name": "x", "activation_func": "glu"}, "activation_func is 'glu'"),
    ({"name": "x", "activation_func": "multiheadattention"}, "activation_func is 'multiheadattention'"),
    ({"name": "x", "use_dropout": True, "dropout_structure": "0, 0.1"}, "needs one value per layer_structure entry"),
])
def test_create_limits_are_sentences(values, message) -> None:
    with pytest.raises(SettingsError) as caught:
        CreateSettings(**values)
    assert message in str(caught.value)


def test_create_names_are_a1111s_letters_of_any_script() -> None:
    assert CreateSettings(name="сова v2_x.1").name == "сова v2_x.1"  # A1111 keeps what str.isalnum() accepts
    with pytest.raises(SettingsError):
        CreateSettings(name="сова!")


def test_create_keeps_a1111_dropout_semantics() -> None:
    off = CreateSettings(name="x", use_dropout=False, dropout_structure="0, 0.5")  # ignored, as A1111 ignores it
    assert off.dropout == [0.0, 0.0, 0.0]
    on = CreateSettings(name="x", use_dropout=True, dropout_structure="0, 0.1, 0")
    assert on.dropout == [0.0, 0.1, 0.0]


@pytest.mark.parametrize("model", FAMILIES)
def test_every_field_has_help_and_a_valid_default(model) -> None:
    for name, info in model.model_fields.items():
        assert info.description, f"{model.__name__}.{name} has no help text"
    defaults = model(name="x") if model is CreateSettings else model()  # the defaults pass the limits
    assert defaults.model_dump() == model.parse(defaults.model_dump()).model_dump()


def test_readme_tables_are_what_the_models_say() -> None:
    from pathlib import Path

    from hypernet.settings.docs import rewrite, tables

    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    for name in tables():
        assert f"<!-- settings:{name} -->" in readme, f"README has no {name} table"
    assert rewrite(readme) == readme, "README tables are stale: run `python -m hypernet.settings.docs README.md`"


def test_folders_read_the_environment_when_made_not_at_import(tmp_path, monkeypatch, capsys) -> None:
    """$HYPERNET_* set after hypernet was imported (a test, a server configured in-process) still counts: for
    :class:`Folders` and for every command's folder options."""
    from hypernet.cli import main
    from hypernet.network import Hypernetwork

    for variable, name in (("HYPERNET_HYPERNETWORK_DIR", "hypernetwork_dir"), ("HYPERNET_LORA_DIR", "lora_dir"),
                           ("HYPERNET_EMBEDDINGS_DIR", "embeddings_dir")):
        monkeypatch.setenv(variable, str(tmp_path / name))
        assert getattr(Folders(), name) == str(tmp_path / name)
    assert TrainSettings(data_root="d", log_directory="l").hypernetwork_dir == str(tmp_path / "hypernetwork_dir")
    Hypernetwork.create("late", [32], seed=1).save(tmp_path / "hypernetwork_dir" / "late.pt")
    main(["list"])
    assert "late" in capsys.readouterr().out


@pytest.mark.parametrize(("args", "said"), [(["--port", "70000"], "port is 70000; expected a value from 0 to 65535."),
                                            (["--precision", "fp8"], "precision is 'fp8'; expected one of"),
                                            (["--max-request-mb", "0"], "max_request_mb is 0; expected a value from 1")])
def test_serve_options_are_checked_by_their_model_before_anything_loads(args, said, capsys) -> None:
    from hypernet.cli import main
    from hypernet.server.state import ServerConfig

    with pytest.raises(SystemExit) as exit:
        main(["serve", *args])
    assert exit.value.code == 2 and said in capsys.readouterr().err
    config, defaults = ServerConfig(), ServeSettings()  # an in-process server starts from the same defaults
    assert (config.host, config.port, config.precision, config.limits.max_request_bytes) == \
        (defaults.host, defaults.port, defaults.precision, defaults.max_request_mb * 1024 * 1024)
    assert config.models_dir == Path(defaults.models_dir).absolute()
