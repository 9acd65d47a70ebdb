"""The ``hypernet`` command line. Errors are one sentence; ``--debug`` shows the traceback instead."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from hypernet import __version__
from hypernet.defaults import DEFAULT_WIDTHS, TOY_CHECKPOINT, TOY_NOTE
from hypernet.engine.paste import read_parameters, settings_from_infotext
from hypernet.errors import HypernetError
from hypernet.export.command import bake, export_lora
from hypernet.fileio import next_number
from hypernet.grid.command import grid
from hypernet.grid.pick import pick
from hypernet.prepare.command import preprocess
from hypernet.server.command import serve
from hypernet.settings import CreateSettings, GenerateSettings
from hypernet.settings import cli as settings_cli
from hypernet.settings.cli import console, field_default, field_option, say
from hypernet.settings.folders import Folders
from hypernet.settings.images import open_image
from hypernet.train.command import train

app = typer.Typer(
    help="Stable Diffusion hypernetworks: create, inspect, convert, list (A1111-compatible files).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

app.command()(preprocess)
app.command()(train)
app.command()(serve)
app.command("export-lora")(export_lora)
app.command()(bake)
app.command()(grid)
app.command()(pick)

DEFAULT_HN_DIR = field_default(Folders, "hypernetwork_dir", Path)
HnDir = Annotated[Path, field_option(Folders, "hypernetwork_dir")]


def _version(value: bool) -> None:
    if value:
        print(f"hypernet {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors (also after the command).")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Options shared by every command (``--debug`` is read by ``main``)."""


def _create(settings: CreateSettings, dir: Path, format: str) -> None:
    """Create a new hypernetwork file, like A1111's "Create hypernetwork" form."""
    from hypernet.network import Hypernetwork  # torch: loaded only by the commands that need it

    if format not in ("pt", "safetensors"):
        raise HypernetError(f"--format {format!r} must be 'pt' or 'safetensors'.")
    path = dir / f"{settings.name}.{format}"
    if path.exists() and not settings.overwrite_old:
        raise HypernetError(f"{path} already exists; pass --overwrite to replace it.")
    net = Hypernetwork.create(**settings.network_arguments())
    net.save(path)
    say(f"Created {path} ({net.num_parameters():,} parameters; widths {', '.join(map(str, settings.enable_sizes))})")


def _before_create(values: dict[str, object], extras: dict[str, object]) -> None:
    """--dropout alone turns dropout on; without --sizes the network gets the widths of --model (the embedded toy
    model when none is named), so it acts on the model it will be used with."""
    if "dropout_structure" in values:
        values.setdefault("use_dropout", True)
    sizes, model = extras.pop("sizes"), extras.pop("model")
    if sizes is not None:
        values["enable_sizes"] = sizes
    else:
        CreateSettings.parse(values)  # the other options' mistakes first, before a model loads
        values["enable_sizes"] = _model_widths(model)


def _model_widths(model: str | None) -> list[int]:
    """The widths a network needs on ``model`` (the embedded toy model when None)."""
    from hypernet.engine.checkpoints import load_pipeline
    from hypernet.engine.model_defaults import network_widths

    if model is None:
        say(TOY_NOTE)
    pipe, info = load_pipeline(model or TOY_CHECKPOINT)
    return network_widths(pipe, info.text_widths)


app.command("create")(settings_cli.command(
    CreateSettings, _create, before=_before_create, exclude=["enable_sizes"],
    extra=[settings_cli.option("sizes", Optional[str], None, "--sizes",
                               help=CreateSettings.model_fields["enable_sizes"].description or ""),
           settings_cli.option("dir", Path, DEFAULT_HN_DIR, *Folders.surface("hypernetwork_dir").flags("dir"),
                               help=Folders.model_fields["hypernetwork_dir"].description or "", show_default=False),
           settings_cli.option("format", str, "pt", "--format", help="pt (A1111) or safetensors."),
           settings_cli.option("model", Optional[str], None, "--model",
                               help="Without --sizes, give the network this checkpoint's widths (default: hypernet's "
                                    f"embedded toy model; A1111's form uses {','.join(map(str, DEFAULT_WIDTHS))}, "
                                    "SD 1.x's).")],
))


@app.command()
def inspect(
    file: Path,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Show a hypernetwork file's structure, training state and hash."""
    _existing_file(file, "FILE")
    from hypernet.network import describe_file

    info = describe_file(file)
    if as_json:
        print(json.dumps(info, indent=2))
        return
    table = Table(show_header=False, title=escape(str(file)))
    for key, value in info.items():
        table.add_row(key, escape(f"{value:,}" if isinstance(value, int) and key == "parameters" else str(value)))
    console().print(table)


@app.command()
def convert(
    src: Path,
    dst: Path,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace DST if it exists (as create --overwrite).")] = False,
) -> None:
    """Convert between .pt (A1111) and .safetensors, losslessly."""
    _existing_file(src, "SRC")
    if dst.exists() and dst.resolve() == src.resolve():
        raise HypernetError(f"{dst}: the output must differ from the input.")
    if dst.exists() and not overwrite:
        raise HypernetError(f"{dst} already exists; pass --overwrite to replace it.")
    if dst.suffix.lower() not in (".pt", ".safetensors"):
        raise HypernetError(f"{dst}: the output must end in .pt (A1111) or .safetensors.")
    from hypernet.network import load_hypernetwork

    load_hypernetwork(src).save(dst)
    say(f"Wrote {dst}")


def _existing_file(path: Path, what: str) -> None:
    if not path.exists():
        raise HypernetError(f"{what} {path}: no such file.")
    if not path.is_file():
        raise HypernetError(f"{what} {path}: is a folder; expected a file.")


def _existing_dir(path: Path, flag: str) -> None:
    if not path.exists():
        raise HypernetError(f"{flag} {path}: no such folder.")
    if not path.is_dir():
        raise HypernetError(f"{flag} {path}: is a file; expected a folder.")


@app.command("list")
def list_(dir: HnDir = DEFAULT_HN_DIR) -> None:
    """List hypernetworks the way A1111 discovers them (recursive; name = file stem)."""
    _existing_dir(dir, "--dir")
    from hypernet.network import list_hypernetworks

    found = list_hypernetworks(dir)
    if not found:
        say(f"No hypernetworks in {dir}")
        return
    table = Table("name", "file")
    for name, path in found.items():
        table.add_row(escape(name), escape(str(path)))
    console().print(table)


@app.command()
def generate(
    ctx: typer.Context,
    prompt: Annotated[Optional[str], typer.Argument(help="Prompt (A1111 syntax); omit with --prompts.")] = None,
    model: Annotated[Optional[str], typer.Option(help="Checkpoint (.safetensors/.ckpt), diffusers folder or Hub id; "
                                                 "default: hypernet's embedded toy model.")] = None,
    prompts: Annotated[Optional[Path], typer.Option(help="A file with one prompt per line; under `accelerate launch` "
                                                    "the lines are split across processes.")] = None,
    negative: Annotated[str, field_option(GenerateSettings, "negative_prompt")] = field_default(GenerateSettings, "negative_prompt"),
    hypernetwork_dir: Annotated[Path, field_option(Folders, "hypernetwork_dir")] = DEFAULT_HN_DIR,
    lora_dir: Annotated[Path, field_option(Folders, "lora_dir")] = field_default(Folders, "lora_dir", Path),
    embeddings_dir: Annotated[Path, field_option(Folders, "embeddings_dir")] = field_default(Folders, "embeddings_dir", Path),
    esrgan_dir: Annotated[Path, field_option(Folders, "esrgan_dir")] = field_default(Folders, "esrgan_dir", Path),
    sampler: Annotated[Optional[str], field_option(GenerateSettings, "sampler_name")] = None,  # None: the model's
    scheduler: Annotated[str, field_option(GenerateSettings, "scheduler")] = field_default(GenerateSettings, "scheduler"),
    steps: Annotated[Optional[int], field_option(GenerateSettings, "steps")] = None,
    cfg: Annotated[Optional[float], field_option(GenerateSettings, "cfg_scale")] = None,
    seed: Annotated[int, field_option(GenerateSettings, "seed")] = field_default(GenerateSettings, "seed"),
    size: Annotated[Optional[str], typer.Option(help="WIDTHxHEIGHT, multiples of 8 (default: the model's native "
                                                "size, e.g. 512x512 for SD 1.x, 64x64 for the toy model).")] = None,
    batch_size: Annotated[int, field_option(GenerateSettings, "batch_size")] = field_default(GenerateSettings, "batch_size"),
    batch_count: Annotated[int, field_option(GenerateSettings, "n_iter")] = field_default(GenerateSettings, "n_iter"),
    clip_skip: Annotated[int, field_option(GenerateSettings, "clip_skip")] = field_default(GenerateSettings, "clip_skip"),
    init_image: Annotated[Optional[Path], typer.Option(help="img2img source image.")] = None,
    denoise: Annotated[float, field_option(GenerateSettings, "denoising_strength")] = field_default(GenerateSettings, "denoising_strength"),
    resize_mode: Annotated[int, field_option(GenerateSettings, "resize_mode")] = field_default(GenerateSettings, "resize_mode"),
    vae: Annotated[Optional[Path], typer.Option(help="Separate VAE file.")] = None,
    precision: Annotated[str, typer.Option(help="fp32, fp16 or bf16 model weights (hypernetworks stay fp32).")] = "fp32",
    hypernetwork_precision: Annotated[str, typer.Option(help="Run hypernetworks in fp32, bf16 or fp16 (faster, "
                                                        "~1e-3 relative error).")] = "fp32",
    medvram: Annotated[bool, typer.Option("--medvram", help="Offload whole models to the CPU between uses (GPU).")] = False,
    lowvram: Annotated[bool, typer.Option("--lowvram", help="Offload layer by layer: least memory, slowest (GPU).")] = False,
    vae_tiling: Annotated[bool, typer.Option("--vae-tiling", help="Decode large images in tiles.")] = False,
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("outputs"),
    infotext: Annotated[Optional[str], typer.Option(help="Run with the parameters of an A1111 infotext: an image "
                                                    "carrying one, a text file, or the text itself; options given "
                                                    "on the command line win.")] = None,
    rng: Annotated[str, typer.Option(help="Noise source as A1111: GPU (CUDA's stream; reproduced on any device), "
                                     "CPU or NV.")] = "GPU",
    subseed: Annotated[int, field_option(GenerateSettings, "subseed")] = field_default(GenerateSettings, "subseed"),
    subseed_strength: Annotated[float, field_option(GenerateSettings, "subseed_strength")] = field_default(GenerateSettings, "subseed_strength"),
    seed_resize_from: Annotated[Optional[str], typer.Option(help="WIDTHxHEIGHT the seed's noise was made at.")] = None,
    ensd: Annotated[int, typer.Option(help="Eta noise seed delta (A1111 setting).")] = 0,
    eta: Annotated[Optional[float], typer.Option(help="Eta for ancestral/SDE/DDIM samplers (default: A1111's).")] = None,
    hires: Annotated[bool, field_option(GenerateSettings, "enable_hr")] = field_default(GenerateSettings, "enable_hr"),
    hr_scale: Annotated[float, field_option(GenerateSettings, "hr_scale")] = field_default(GenerateSettings, "hr_scale"),
    hr_resize: Annotated[Optional[str], typer.Option(help="Hires target WIDTHxHEIGHT instead of --hr-scale.")] = None,
    hr_upscaler: Annotated[Optional[str], field_option(GenerateSettings, "hr_upscaler")] = field_default(GenerateSettings, "hr_upscaler"),
    hr_steps: Annotated[int, field_option(GenerateSettings, "hr_second_pass_steps")] = field_default(GenerateSettings, "hr_second_pass_steps"),
    hr_sampler: Annotated[Optional[str], field_option(GenerateSettings, "hr_sampler_name")] = field_default(GenerateSettings, "hr_sampler_name"),
    hr_scheduler: Annotated[Optional[str], field_option(GenerateSettings, "hr_scheduler")] = field_default(GenerateSettings, "hr_scheduler"),
    hr_prompt: Annotated[str, field_option(GenerateSettings, "hr_prompt")] = field_default(GenerateSettings, "hr_prompt"),
    hr_negative: Annotated[str, field_option(GenerateSettings, "hr_negative_prompt")] = field_default(GenerateSettings, "hr_negative_prompt"),
) -> None:
    """Generate images; <hypernet:NAME:WEIGHT> in the prompt applies hypernetworks (A1111 syntax)."""
    _check_generate_options(prompt=prompt, negative_prompt=negative, sampler_name=sampler, scheduler=scheduler,
                            steps=steps, cfg_scale=cfg, seed=seed, size=size, batch_size=batch_size,
                            n_iter=batch_count, clip_skip=clip_skip, denoising_strength=denoise,
                            resize_mode=resize_mode, subseed=subseed,
                            subseed_strength=subseed_strength, seed_resize_from=seed_resize_from, enable_hr=hires,
                            hr_scale=hr_scale, hr_second_pass_steps=hr_steps, hr_resize=hr_resize,
                            hr_upscaler=hr_upscaler, hr_sampler_name=hr_sampler, hr_scheduler=hr_scheduler,
                            hr_prompt=hr_prompt, hr_negative_prompt=hr_negative)
    if init_image is not None:
        open_image(init_image, "--init-image", load=False).close()  # exists, readable, not too large: before loading
    term = console()
    sampler_params: dict = {}
    if infotext is not None:  # fields the command line did not set come from the infotext
        pasted, ignored = settings_from_infotext(read_parameters(infotext))
        sampler_params = pasted.pop("sampler_params", {})
        chosen = dict(ctx.params)
        for name, value in _cli_values(pasted).items():
            source = ctx.get_parameter_source(name)
            if source is None or source.name in ("DEFAULT", "DEFAULT_MAP"):  # not given on the command line
                chosen[name] = value
        (prompt, negative, sampler, scheduler, steps, cfg, seed, size, clip_skip, denoise, rng, subseed,
         subseed_strength, seed_resize_from, ensd, eta, hires, hr_scale, hr_resize, hr_upscaler, hr_steps, hr_sampler,
         hr_scheduler, hr_prompt, hr_negative) = (chosen[k] for k in PASTED_OPTIONS)
        term.print(f"infotext: ignored {', '.join(ignored)}" if ignored else "infotext: every field was used")
    if model is None:
        term.print(TOY_NOTE, style="dim", markup=False)
        model = str(TOY_CHECKPOINT)
    jobs = _prompt_jobs(prompt, prompts)
    width = height = None  # the model's native size
    try:
        if size is not None:
            width, height = (int(v) for v in size.lower().split("x"))
    except ValueError:
        raise HypernetError(f"--size {size!r} must look like 512x768") from None
    resize_w, resize_h = _size_option("--seed-resize-from", seed_resize_from) if seed_resize_from else (0, 0)
    hr_x, hr_y = _size_option("--hr-resize", hr_resize) if hr_resize else (0, 0)
    noise_and_hires = dict(
        rng=rng, subseed=subseed, subseed_strength=subseed_strength, seed_resize_from_w=resize_w,
        seed_resize_from_h=resize_h, ensd=ensd, eta=eta, sampler_params=sampler_params, enable_hr=hires,
        hr_scale=hr_scale, hr_upscaler=hr_upscaler, hr_second_pass_steps=hr_steps, hr_resize_x=hr_x, hr_resize_y=hr_y,
        hr_sampler_name=hr_sampler, hr_scheduler=hr_scheduler, hr_prompt=hr_prompt, hr_negative_prompt=hr_negative)
    import torch  # the model libraries load only once every option has been checked
    from accelerate import PartialState
    from rich.progress import Progress

    from hypernet.engine.generate import Generator, Settings
    from hypernet.engine.infotext import save_image
    from hypernet.engine.loading import open_model

    init = open_image(init_image, "--init-image") if init_image is not None else None
    state = PartialState(cpu=not torch.cuda.is_available())  # one process, or one of several (accelerate launch)
    with term.status(escape(f"loading {model}")):
        pipe, info = open_model(model, vae=vae, precision=precision, device=state.device, medvram=medvram,
                                lowvram=lowvram, vae_tiling=vae_tiling)
    generator = Generator(pipe, info, hypernetwork_dir, esrgan_dir, lora_dirs=[lora_dir], embeddings_dir=embeddings_dir)
    out.mkdir(parents=True, exist_ok=True)
    per_job = batch_size * batch_count
    start = next_number(out)  # never overwrite earlier outputs (A1111 numbers on from the folder)
    state.wait_for_everyone()
    with state.split_between_processes(jobs) as mine, Progress(console=term, transient=True) as bar:
        if state.num_processes > 1:
            term.print(f"process {state.process_index + 1}/{state.num_processes}: {len(mine)} prompt(s)")
        for index, text in mine:
            job_seed = seed + index * per_job if seed != -1 else -1
            settings = Settings(text, negative, sampler, scheduler, steps, cfg, job_seed, width, height, batch_size,
                                batch_count, clip_skip, init, denoise, resize_mode=resize_mode,
                                hypernetwork_precision=hypernetwork_precision,
                                **noise_and_hires)
            task = bar.add_task(f"prompt {index + 1}/{len(jobs)}", total=None)
            result = generator.generate(settings, lambda done, total, t=task: bar.update(t, completed=done, total=total))
            for a in result.applied:
                hits = ", ".join(f"{n} layers at width {w}" for w, n in sorted(a.layers_by_width.items()))
                term.print(f"applied {a.name} x{a.multiplier}: {hits}", markup=False)
            for lora in result.loras:
                term.print(f"applied LoRA {lora.name} te x{lora.te} unet x{lora.unet}: {lora.layers} layers",
                              markup=False)
            if result.embeddings:
                term.print(f"embeddings used: {', '.join(result.embeddings)}", markup=False)
            for warning in result.warnings:
                term.print(f"warning: {warning}", style="yellow", markup=False)
            for i, (image, text_info, seed_used) in enumerate(zip(result.images, result.infotexts, result.seeds)):
                path = out / f"{start + index * per_job + i:05d}-{seed_used}.png"
                save_image(image, path, text_info)
                term.print(f"saved {path}", markup=False)


# the generate options an infotext can fill, in the order generate() unpacks them
PASTED_OPTIONS = ("prompt", "negative", "sampler", "scheduler", "steps", "cfg", "seed", "size", "clip_skip", "denoise",
                  "rng", "subseed", "subseed_strength", "seed_resize_from", "ensd", "eta", "hires", "hr_scale",
                  "hr_resize", "hr_upscaler", "hr_steps", "hr_sampler", "hr_scheduler", "hr_prompt", "hr_negative")
_SETTING_TO_OPTION = {"negative_prompt": "negative", "sampler_name": "sampler", "cfg_scale": "cfg",
                      "denoising_strength": "denoise", "enable_hr": "hires", "hr_second_pass_steps": "hr_steps",
                      "hr_sampler_name": "hr_sampler", "hr_negative_prompt": "hr_negative"}


def _cli_values(settings: dict) -> dict:
    """Settings values (from an infotext) as ``generate`` option values."""
    values = {_SETTING_TO_OPTION.get(k, k): v for k, v in settings.items()}
    for option, (w, h) in {"size": ("width", "height"), "seed_resize_from": ("seed_resize_from_w", "seed_resize_from_h"),
                           "hr_resize": ("hr_resize_x", "hr_resize_y")}.items():
        if w in values or h in values:
            values[option] = f"{values.pop(w, 0)}x{values.pop(h, 0)}"
    return {k: v for k, v in values.items() if k in PASTED_OPTIONS}


def _size_option(option: str, value: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in value.lower().split("x"))
    except ValueError:
        raise HypernetError(f"{option} {value!r} must look like 512x768") from None
    return width, height


def _check_generate_options(*, size: str | None, seed_resize_from: str | None, hr_resize: str | None,
                            prompt: str | None, **values: object) -> None:
    """The options' limits (GenerateSettings: the same sentences as the API), before torch and the model load."""
    size_values = dict(zip(("width", "height"), _size_option("--size", size))) if size else {}
    resize_w, resize_h = _size_option("--seed-resize-from", seed_resize_from) if seed_resize_from else (0, 0)
    hr_x, hr_y = _size_option("--hr-resize", hr_resize) if hr_resize else (0, 0)
    given = {name: value for name, value in values.items() if value is not None}  # None: the model's default
    GenerateSettings(**given, **size_values, prompt=prompt or "", seed_resize_from_w=resize_w,
                     seed_resize_from_h=resize_h, hr_resize_x=hr_x, hr_resize_y=hr_y)


def _prompt_jobs(prompt: str | None, prompts_file: Path | None) -> list[tuple[int, str]]:
    """(index, prompt) pairs: the one prompt, or the non-empty, non-comment lines of ``--prompts``."""
    if (prompt is None) == (prompts_file is None):
        raise HypernetError("give either a PROMPT or --prompts FILE (one of them)")
    if prompts_file is None:
        return [(0, prompt or "")]
    try:
        lines = prompts_file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise HypernetError(f"{prompts_file}: cannot read the prompts file ({e.__class__.__name__})") from None
    texts = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not texts:
        raise HypernetError(f"{prompts_file}: no prompts in the file (one per line; # starts a comment)")
    return list(enumerate(texts))


@app.command("samplers")
def samplers() -> None:
    """List A1111's samplers and schedule types; every one can be used with --sampler / --scheduler."""
    from hypernet.sampling import SAMPLERS, SCHEDULES

    table = Table("sampler", "aliases", "Automatic schedule")
    for sampler in SAMPLERS:
        automatic = sampler.default_schedule or ("timesteps" if sampler.kind == "timesteps" else "the model's")
        table.add_row(sampler.name, ", ".join(sampler.aliases), automatic)
    console().print(table)
    print("schedule types: " + ", ".join(schedule.label for schedule in SCHEDULES))


@app.command("png-info")
def png_info(file: Path) -> None:
    """Print the generation parameters stored in an image (ours or A1111's)."""
    from hypernet.engine.infotext import parse_infotext, read_infotext

    with open_image(file, "FILE") as image:
        text, _ = read_infotext(image)
    if not text:
        raise HypernetError(f"{file}: the image holds no generation parameters")
    print(text)
    print(json.dumps(parse_infotext(text), indent=2))


def main(argv: list[str] | None = None) -> None:
    """Entry point: usage mistakes and user errors print one line and exit 2; ``--debug`` re-raises user errors."""
    settings_cli.run_app(app, argv, "hypernet")


if __name__ == "__main__":
    main()
