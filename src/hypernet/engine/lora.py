"""LoRA networks merged into a diffusers pipeline's weights, reproducing A1111 v1.10's built-in Lora extension.

**Key mapping.** A1111 renames every kohya key to an LDM ("compvis") module name with a fixed table and a few
fallbacks, then looks it up among the LDM model's modules. diffusers' and PEFT's loaders do not give A1111's numbers
(they skip kohya's ``lora_te_`` keys differently, convert SDXL up-samplers correctly where A1111 misses them, and
apply OpenCLIP attention piecemeal), so this module reproduces A1111's table instead: :class:`LayerTable` names each
diffusers module by its LDM name (OpenCLIP names for SD2 and SDXL's second encoder), and :func:`compvis_name` is
A1111's conversion, quirks included (``lora_te_`` keys do nothing on SDXL; OpenCLIP attention changes only when q,
k, v and out are all present; ``layer_norm`` keys are ignored there). Files in diffusers/PEFT layout (``unet.…``,
``text_encoder.…``), which A1111 loads with no effect, are applied to the modules they name, with a warning.

**Merging.** The deltas of the active networks are added to the weights once, in float32, and the merged tensors
are cached: :meth:`LoraMerger.apply` swaps them in, :meth:`LoraMerger.restore` swaps the untouched originals back
(bit-identical by construction), so a later generation with the same LoRAs costs nothing. Each swap bumps the
parameter's version counter, which is what weight-derived caches (the hypernetwork fold) key on.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from diffusers import DiffusionPipeline
from torch import nn

from hypernet.errors import HypernetError
from hypernet.prompt.tags import LoraSelection, lora_selections, parse_prompts
from hypernet.network.lora import (
    FORBIDDEN_ALIASES,
    LoraFile,
    UnsupportedModule,
    list_loras,
    load_lora_tensors,
    lora_hash,
    module_delta,
    module_type,
    resolve_lora,
)

HOOKED = (nn.Linear, nn.Conv2d, nn.GroupNorm, nn.LayerNorm)
DIFFUSERS_PREFIXES = ("unet.", "text_encoder.", "text_encoder_2.")
UNET_RESNET_NAMES = {"norm1": "in_layers_0", "conv1": "in_layers_2", "time_emb_proj": "emb_layers_1",
                     "norm2": "out_layers_0", "conv2": "out_layers_3", "conv_shortcut": "skip_connection"}
OPEN_CLIP_NAMES = {"mlp.fc1": "mlp_c_fc", "mlp.fc2": "mlp_c_proj", "layer_norm1": "ln_1", "layer_norm2": "ln_2",
                   "self_attn.out_proj": "attn_out_proj"}
MHA_MEMBERS = ("q_proj", "k_proj", "v_proj", "out_proj")
# diffusers' and PEFT's weight names -> kohya's
_DIFFUSERS_PARTS = (
    (".lora_A.weight", "lora_down.weight"), (".lora_B.weight", "lora_up.weight"),
    (".lora_B.bias", "lora_up.bias"),  # PEFT's lora_bias=True
    (".lora_linear_layer.down.weight", "lora_down.weight"), (".lora_linear_layer.up.weight", "lora_up.weight"),
    (".lora.down.weight", "lora_down.weight"), (".lora.up.weight", "lora_up.weight"),
    ("_lora.down.weight", "lora_down.weight"), ("_lora.up.weight", "lora_up.weight"),
    (".alpha", "alpha"),
)


@dataclass(frozen=True)
class LoraSpec:
    """One LoRA to apply: the file, and the tag that chose it (the name as the prompt wrote it, stem or alias, which
    the infotext records, and A1111's multipliers: ``te`` for text encoders, ``unet``, ``dyn``)."""

    file: LoraFile
    tag: LoraSelection


@dataclass(frozen=True)
class Target:
    """A module LoRA can change; ``group`` names the OpenCLIP attention it belongs to (all four parts or none)."""

    module: nn.Module
    text: bool
    group: str | None = None
    member: str | None = None


# =============================================================================================== key mapping
def compvis_name(key: str, is_sd2: bool) -> str:
    """A1111's ``convert_diffusers_name_to_compvis``: a kohya layer name as the LDM module name (``.`` -> ``_``).

    It assumes SD's two resnets per level (``1 + 3b + l``); a key matching no rule is returned unchanged.
    """
    def openclip(rest: str) -> str:
        if "mlp_fc1" in rest:
            return rest.replace("mlp_fc1", "mlp_c_fc")
        if "mlp_fc2" in rest:
            return rest.replace("mlp_fc2", "mlp_c_proj")
        return rest.replace("self_attn", "attn")

    if m := re.match(r"lora_unet_conv_in(.*)", key):
        return f"diffusion_model_input_blocks_0_0{m[1]}"
    if m := re.match(r"lora_unet_conv_out(.*)", key):
        return f"diffusion_model_out_2{m[1]}"
    if m := re.match(r"lora_unet_time_embedding_linear_(\d+)(.*)", key):
        return f"diffusion_model_time_embed_{int(m[1]) * 2 - 2}{m[2]}"
    if m := re.match(r"lora_unet_down_blocks_(\d+)_(attentions|resnets)_(\d+)_(.+)", key):
        suffix = UNET_RESNET_NAMES.get(m[4], m[4]) if m[2] == "resnets" else m[4]
        return f"diffusion_model_input_blocks_{1 + int(m[1]) * 3 + int(m[3])}_{1 if m[2] == 'attentions' else 0}_{suffix}"
    if m := re.match(r"lora_unet_mid_block_(attentions|resnets)_(\d+)_(.+)", key):
        suffix = UNET_RESNET_NAMES.get(m[3], m[3]) if m[1] == "resnets" else m[3]
        return f"diffusion_model_middle_block_{1 if m[1] == 'attentions' else int(m[2]) * 2}_{suffix}"
    if m := re.match(r"lora_unet_up_blocks_(\d+)_(attentions|resnets)_(\d+)_(.+)", key):
        suffix = UNET_RESNET_NAMES.get(m[4], m[4]) if m[2] == "resnets" else m[4]
        return f"diffusion_model_output_blocks_{int(m[1]) * 3 + int(m[3])}_{1 if m[2] == 'attentions' else 0}_{suffix}"
    if m := re.match(r"lora_unet_down_blocks_(\d+)_downsamplers_0_conv", key):
        return f"diffusion_model_input_blocks_{3 + int(m[1]) * 3}_0_op"
    if m := re.match(r"lora_unet_up_blocks_(\d+)_upsamplers_0_conv", key):
        return f"diffusion_model_output_blocks_{2 + int(m[1]) * 3}_{2 if int(m[1]) > 0 else 1}_conv"
    if m := re.match(r"lora_te_text_model_encoder_layers_(\d+)_(.+)", key):
        if is_sd2:
            return f"model_transformer_resblocks_{m[1]}_{openclip(m[2])}"
        return f"transformer_text_model_encoder_layers_{m[1]}_{m[2]}"
    if m := re.match(r"lora_te2_text_model_encoder_layers_(\d+)_(.+)", key):
        return f"1_model_transformer_resblocks_{m[1]}_{openclip(m[2])}"
    return key


def unet_ldm_name(name: str, unet: nn.Module) -> str | None:
    """The LDM (``openaimodel.UNetModel``) path of a diffusers UNet module, ``.`` as ``_``; None if it has none."""
    config = unet.config
    per = config.layers_per_block + 1  # LDM counts a level's resnets plus its down/upsampler
    fixed = {"conv_in": "input_blocks_0_0", "time_embedding.linear_1": "time_embed_0",
             "time_embedding.linear_2": "time_embed_2", "add_embedding.linear_1": "label_emb_0_0",
             "add_embedding.linear_2": "label_emb_0_2", "conv_norm_out": "out_0", "conv_out": "out_2"}
    if name in fixed:
        return fixed[name]

    def tail(kind: str, rest: str) -> str:
        return UNET_RESNET_NAMES.get(rest, rest) if kind == "resnets" else rest.replace(".", "_")

    if m := re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", name):
        return f"input_blocks_{1 + per * int(m[1]) + int(m[3])}_{0 if m[2] == 'resnets' else 1}_{tail(m[2], m[4])}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv", name):
        return f"input_blocks_{per * (int(m[1]) + 1)}_0_op"
    if m := re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.+)", name):
        return f"middle_block_{2 * int(m[1])}_{tail('resnets', m[2])}"
    if m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", name):
        return f"middle_block_1_{tail('attentions', m[1])}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", name):
        return f"output_blocks_{per * int(m[1]) + int(m[3])}_{0 if m[2] == 'resnets' else 1}_{tail(m[2], m[4])}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv", name):
        has_attention = config.up_block_types[int(m[1])].startswith("CrossAttn")
        return f"output_blocks_{per * int(m[1]) + per - 1}_{2 if has_attention else 1}_conv"
    return None


@dataclass
class LayerTable:
    """A pipeline's LoRA-changeable modules under A1111's LDM names, and under diffusers' names for diffusers files."""

    is_sd2: bool
    compvis: dict[str, Target] = field(default_factory=dict)
    attention: dict[str, dict[str, Target]] = field(default_factory=dict)  # OpenCLIP "..._attn" -> q/k/v/out
    diffusers: dict[str, Target] = field(default_factory=dict)

    @classmethod
    def of(cls, pipe: DiffusionPipeline, family: str) -> LayerTable:
        table = cls(is_sd2=family == "sd2")
        for name, module in pipe.unet.named_modules():
            if isinstance(module, HOOKED):
                target = Target(module, text=False)
                table.diffusers["unet." + name] = target
                ldm = unet_ldm_name(name, pipe.unet)
                if ldm is not None:
                    table.compvis["diffusion_model_" + ldm] = target
        encoders = [("text_encoder", pipe.text_encoder)]
        if getattr(pipe, "text_encoder_2", None) is not None:
            encoders.append(("text_encoder_2", pipe.text_encoder_2))
        for index, (component, encoder) in enumerate(encoders):
            openclip = family == "sd2" or index == 1
            prefix = {("sdxl", 0): "0_", ("sdxl", 1): "1_"}.get((family, index), "")
            for name, module in encoder.named_modules():
                # transformers 5's CLIPTextModel drops the "text_model." that checkpoints and LoRA keys have
                name = name if name.startswith("text_model.") or not name else "text_model." + name
                if isinstance(module, HOOKED) and name != "text_model.text_projection":
                    table.diffusers[f"{component}.{name}"] = Target(module, text=True)
                    if openclip:
                        table._add_openclip(prefix + "model_", name, module)
                    else:
                        table.compvis[prefix + "transformer_" + name.replace(".", "_")] = Target(module, text=True)
        return table

    def _add_openclip(self, prefix: str, name: str, module: nn.Module) -> None:
        """OpenCLIP's names for an HF CLIP module: fused attention (``attn``), ``mlp_c_fc``, ``ln_1``, ``ln_final``."""
        if name == "text_model.final_layer_norm":
            self.compvis[prefix + "ln_final"] = Target(module, text=True)
            return
        m = re.fullmatch(r"text_model\.encoder\.layers\.(\d+)\.(.+)", name)
        if m is None:
            return
        block = f"{prefix}transformer_resblocks_{m[1]}_"
        if q := re.fullmatch(r"self_attn\.([qkv]_proj|out_proj)", m[2]):
            group = block + "attn"
            target = Target(module, text=True, group=group, member=q[1])
            self.attention.setdefault(group, {})[q[1]] = target
            if q[1] == "out_proj":
                self.compvis[block + "attn_out_proj"] = target
        elif m[2] in OPEN_CLIP_NAMES:
            self.compvis[block + OPEN_CLIP_NAMES[m[2]]] = Target(module, text=True)

    def resolve(self, layer: str) -> Target | None:
        """A1111's lookup of a kohya layer name: converted name, ``*_[qkv]_proj`` of a fused attention, then
        ``lora_unet`` -> ``diffusion_model`` (SDXL files with LDM names) and ``lora_te1_text_model`` fallbacks."""
        key = compvis_name(layer, self.is_sd2)
        target = self.compvis.get(key)
        if target is None and (m := re.fullmatch(r"(.*)_([qkv]_proj)", key)):
            target = self.attention.get(m[1], {}).get(m[2])
        if target is None and "lora_unet" in layer:
            target = self.compvis.get(layer.replace("lora_unet", "diffusion_model"))
        elif target is None and "lora_te1_text_model" in layer:
            target = self.compvis.get(layer.replace("lora_te1_text_model", "0_transformer_text_model"))
            if target is None:
                target = self.compvis.get(layer.replace("lora_te1_text_model", "transformer_text_model"))
        return target


# =============================================================================================== one network
@dataclass
class LoraNetwork:
    """A LoRA file's weights grouped by layer: ``{layer name: {weight name: tensor}}``."""

    name: str
    path: Path
    mtime: float
    groups: dict[str, dict[str, torch.Tensor]]
    diffusers_layout: bool

    @classmethod
    def load(cls, file: LoraFile) -> LoraNetwork:
        """Read and group a file; a layer of an unsupported type is an error naming the file and layer
        (A1111 fails to load such a file too)."""
        mtime = file.path.stat().st_mtime
        state = load_lora_tensors(file.path)
        groups: dict[str, dict[str, torch.Tensor]] = {}
        diffusers_layout = any(k.startswith(DIFFUSERS_PREFIXES) for k in state)
        for key, tensor in state.items():
            if key.startswith("bundle_emb."):
                continue  # embeddings bundled in the file: not applied
            if diffusers_layout:
                layer, part = _diffusers_key(key)
                if layer is None:
                    continue
            else:
                layer, _, part = key.partition(".")
            groups.setdefault(layer, {})[part] = tensor
        if not groups:
            raise HypernetError(f"{file.path}: holds no LoRA weights (expected keys such as "
                                "'lora_unet_..._lora_up.weight').")
        for layer, parts in groups.items():
            try:
                module_type(parts)
            except UnsupportedModule as e:
                raise HypernetError(f"{file.path}: layer {layer!r}: {e}; hypernet cannot apply this file.") from None
        return cls(file.name, file.path, mtime, groups, diffusers_layout)

    def targets(self, table: LayerTable) -> list[tuple[str, Target, dict[str, torch.Tensor]]]:
        """The layers this network changes in a model, in file order; OpenCLIP attention only when complete."""
        found: list[tuple[str, Target, dict[str, torch.Tensor]]] = []
        for layer, parts in self.groups.items():
            target = table.diffusers.get(layer) if self.diffusers_layout else table.resolve(layer)
            if target is not None:
                found.append((layer, target, parts))
        if not self.diffusers_layout:
            members: dict[str, set[str]] = {}
            for _, target, _ in found:
                if target.group is not None:
                    members.setdefault(target.group, set()).add(target.member or "")
            complete = {g for g, m in members.items() if m >= set(MHA_MEMBERS)}
            found = [f for f in found if f[1].group is None or f[1].group in complete]
        return found


def _diffusers_key(key: str) -> tuple[str | None, str]:
    """``unet.….to_q.lora_A.weight`` -> (``unet.….to_q``, ``lora_down.weight``); also the older attention-processor
    names (``….processor.to_q_lora.down.weight``, ``….lora_linear_layer.up.weight``)."""
    for suffix, part in _DIFFUSERS_PARTS:
        if key.endswith(suffix):
            module = key[: -len(suffix)].replace(".processor.", ".")
            if module.endswith("to_out"):
                module += ".0"
            return module, part
    return None, ""


# =============================================================================================== merging
@dataclass
class _Swap:
    module: nn.Module
    attribute: str  # "weight" or "bias"
    original: torch.Tensor | None  # None: the layer had no bias
    merged: torch.Tensor


@dataclass
class MergeReport:
    """What merging did: changed layers per network name, layers that did not fit (A1111's "Networks with errors")."""

    layers: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0  # how long computing the merge took (0 when it came from the cache)


class LoraMerger:
    """Merges LoRA networks into one pipeline's weights and restores them, caching the merged set."""

    def __init__(self, pipe: DiffusionPipeline, family: str) -> None:
        self.pipe = pipe
        self.family = family
        self._table: LayerTable | None = None
        self._key: tuple | None = None
        self._swaps: list[_Swap] = []
        self._versions: list[tuple[int, int]] = []  # (data_ptr, version) of each original when restored
        self._report = MergeReport()
        self._applied = False
        self.merges = 0  # merges computed (not served from the cache)
        self.merge_seconds = 0.0  # how long the last computed merge took

    @property
    def table(self) -> LayerTable:
        if self._table is None:
            self._table = LayerTable.of(self.pipe, self.family)
        return self._table

    def apply(self, networks: Sequence[tuple[LoraNetwork, LoraSpec]]) -> MergeReport:
        """Make the weights those of the model plus ``networks`` (in order); nothing to do when they already are,
        and only a pointer swap when the same set was merged before and the weights have not changed since."""
        key = tuple((str(net.path), net.mtime, spec.tag.te, spec.tag.unet, spec.tag.dyn) for net, spec in networks)
        if key == self._key and self._applied:
            return replace(self._report, seconds=0.0)
        self.restore()
        if not networks:
            return MergeReport()
        if key != self._key or not self._originals_unchanged():
            start = time.perf_counter()
            self._merge(networks)
            self._key, self.merges = key, self.merges + 1
            self._swap_in()
            self._report.seconds = self.merge_seconds = time.perf_counter() - start
            return self._report
        self._swap_in()
        return replace(self._report, seconds=0.0)

    def restore(self) -> None:
        """Put the original weight tensors back (the very tensors, so bit-identical); the merge stays cached."""
        if not self._applied:
            return
        for swap in reversed(self._swaps):
            self._set(swap.module, swap.attribute, swap.original)
        self._versions = [self._fingerprint(s) for s in self._swaps]
        self._applied = False

    def clear(self) -> None:
        """Restore and forget the cached merge (e.g. before the model's weights are replaced)."""
        self.restore()
        self._swaps, self._key, self._versions, self._report = [], None, [], MergeReport()

    def _originals_unchanged(self) -> bool:
        return self._versions == [self._fingerprint(s) for s in self._swaps]

    @staticmethod
    def _fingerprint(swap: _Swap) -> tuple[int, int]:
        param = getattr(swap.module, swap.attribute)
        return (-1, -1) if param is None else (param.data_ptr(), param._version)

    def _swap_in(self) -> None:
        for swap in self._swaps:
            self._set(swap.module, swap.attribute, swap.merged)
        self._applied = True

    @staticmethod
    def _set(module: nn.Module, attribute: str, tensor: torch.Tensor | None) -> None:
        param = getattr(module, attribute)
        if tensor is None:
            setattr(module, attribute, None)
        elif param is None:
            setattr(module, attribute, nn.Parameter(tensor, requires_grad=False))
        else:
            param.data = tensor
            torch.autograd.graph.increment_version(param)  # weight-derived caches see the change

    @torch.no_grad()
    def _merge(self, networks: Sequence[tuple[LoraNetwork, LoraSpec]]) -> None:
        report = MergeReport()
        weights: dict[int, tuple[nn.Module, torch.Tensor, torch.Tensor | None]] = {}  # id -> (module, W, b) fp32
        for net, spec in networks:
            changed = 0
            for _layer, target, parts in net.targets(self.table):
                multiplier = spec.tag.te if target.text else spec.tag.unet
                if multiplier == 0:  # adds exactly nothing; A1111 adds zeros
                    continue
                module = target.module
                entry = weights.get(id(module))
                weight = entry[1] if entry else module.weight.detach().float()
                bias = entry[2] if entry else None
                try:
                    delta, bias_delta = module_delta(parts, weight, multiplier, spec.tag.dyn)
                except ValueError:
                    report.errors[net.name] = report.errors.get(net.name, 0) + 1
                    continue
                weight = weight + delta.to(weight.device)
                if bias_delta is not None:
                    base = bias if bias is not None else (
                        module.bias.detach().float() if module.bias is not None else torch.zeros_like(bias_delta))
                    bias = base + bias_delta.reshape(base.shape).to(base.device)
                weights[id(module)] = (module, weight, bias)
                changed += 1
            report.layers[net.name] = report.layers.get(net.name, 0) + changed
        swaps = []
        for module, weight, bias in weights.values():
            original = module.weight.data
            swaps.append(_Swap(module, "weight", original, weight.to(original.dtype)))
            if bias is not None:
                old = module.bias.data if module.bias is not None else None
                dtype = original.dtype if old is None else old.dtype
                swaps.append(_Swap(module, "bias", old, bias.to(dtype)))
        self._swaps, self._report = swaps, report


# =============================================================================================== the Lora folder
class LoraLibrary:
    """The Lora folders' files (scanned once, rescanned on demand or for a missing name), the networks read from
    them (re-read when a file changes) and their hashes."""

    def __init__(self, directories: Sequence[Path | str | None]) -> None:
        self.directories = [Path(d) for d in directories if d is not None]
        self._files: dict[str, LoraFile] | None = None
        self._networks: dict[str, LoraNetwork] = {}
        self._hashes: dict[tuple[str, float], str] = {}

    def available(self, *, refresh: bool = False) -> dict[str, LoraFile]:
        """Files by name, in A1111's scan order."""
        if self._files is None or refresh:
            self._files = list_loras(self.directories)
        return self._files

    def resolve(self, name: str) -> LoraFile:
        """The file a prompt's name means; a name not found triggers one rescan (a file added since), as in A1111."""
        try:
            return resolve_lora(name, self.available())
        except HypernetError:
            return resolve_lora(name, self.available(refresh=True))

    def network(self, file: LoraFile) -> LoraNetwork:
        cached = self._networks.get(str(file.path))
        if cached is None or cached.mtime != file.path.stat().st_mtime:
            cached = self._networks[str(file.path)] = LoraNetwork.load(file)
        return cached

    def keep_only(self, files: Sequence[LoraFile]) -> None:
        """Drop networks no longer in use (A1111 keeps none beyond the active set by default)."""
        wanted = {str(f.path) for f in files}
        self._networks = {k: v for k, v in self._networks.items() if k in wanted}

    def short_hash(self, file: LoraFile) -> str:
        """A1111's 12-digit LoRA hash for the infotext."""
        key = (str(file.path), file.path.stat().st_mtime)
        if key not in self._hashes:
            self._hashes[key] = lora_hash(file)
        return self._hashes[key][:12]


# =============================================================================================== one generation
@dataclass(frozen=True, kw_only=True)
class AppliedLora(LoraSelection):
    """A LoRA that acted on a generation: its tag (the name as written, its multipliers), file, short hash and layers."""

    path: str
    short_hash: str
    layers: int


def activate_loras(library: LoraLibrary, merger: LoraMerger, prompts: Sequence[str]) -> tuple[list[AppliedLora], list[str]]:
    """Merge the LoRAs the batch's first prompt names (A1111: only the first prompt counts), or restore the
    plain weights when it names none. Unknown names are errors naming the closest names; returns what was applied
    and warnings (layers that did not fit, networks that change nothing, diffusers-layout files)."""
    specs = [LoraSpec(library.resolve(tag.name), tag) for tag in lora_selections(parse_prompts(list(prompts))[1])]
    networks = [(library.network(spec.file), spec) for spec in specs]
    library.keep_only([spec.file for spec in specs])
    report = merger.apply(networks)
    warnings: list[str] = []
    applied: list[AppliedLora] = []
    for net, spec in networks:
        if net.diffusers_layout:
            warnings.append(f"LoRA {spec.tag.name!r} is a diffusers/PEFT-layout file; A1111 v1.10 loads such files "
                            "with no effect, hypernet applies them, so images differ from A1111's.")
        if report.errors.get(net.name):
            warnings.append(f"LoRA {spec.tag.name!r}: {report.errors[net.name]} layers do not fit this model and "
                            "were skipped; it was probably made for another model family.")
        if not report.layers.get(net.name) and (spec.tag.te or spec.tag.unet):
            warnings.append(f"LoRA {spec.tag.name!r} matches no layer of this model: it has no effect.")
        applied.append(AppliedLora(**asdict(spec.tag), path=str(net.path), short_hash=library.short_hash(spec.file),
                                   layers=report.layers.get(net.name, 0)))
    return applied, warnings


def lora_infotext(applied: Sequence[AppliedLora]) -> dict[str, str]:
    """A1111's ``Lora hashes`` field: ``name: hash`` in activation order (``:`` and ``,`` removed from names)."""
    entries = {_infotext_name(a.name): a.short_hash for a in applied if a.short_hash}
    return {"Lora hashes": ", ".join(f"{n}: {h}" for n, h in entries.items())} if entries else {}


def parse_network_hashes(value: str) -> dict[str, str]:
    """``"a: 0123456789ab, b: …"`` (``Lora hashes`` or ``TI hashes``) -> ``{"a": "0123456789ab", …}``."""
    result = {}
    for entry in value.split(","):
        name, sep, short = entry.rpartition(":")
        if sep and name.strip():
            result[name.strip()] = short.strip()
    return result


def names_from_hashes(prompt: str, lora_hashes: str, library: LoraLibrary) -> str:
    """A1111's paste rule: each ``<lora:NAME:`` whose ``Lora hashes`` entry matches a local file by short hash is
    rewritten to that file's alias (its name if the alias is ambiguous), so a shared prompt finds renamed files."""
    by_hash = {}
    for file in library.available().values():
        by_hash.setdefault(library.short_hash(file), file)
    aliases = [f.alias for f in library.available().values()]
    for name, short in parse_network_hashes(lora_hashes).items():
        file = by_hash.get(short)
        if file is None:
            continue
        local = file.alias if aliases.count(file.alias) == 1 and file.alias.lower() not in FORBIDDEN_ALIASES else file.name
        prompt = prompt.replace(f"<lora:{name}:", f"<lora:{local}:")
    return prompt


def _infotext_name(name: str) -> str:
    return name.replace(":", "").replace(",", "")
