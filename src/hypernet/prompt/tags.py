"""A1111's extra-network tags ``<hypernet:NAME:WEIGHT>``: which hypernetworks a batch uses, and the text left for CLIP.

Reproduces A1111 v1.10 (``modules/extra_networks.py`` and ``extra_networks_hypernet.py``), so prompts and infotexts
written for A1111 select the same networks at the same multipliers. Where A1111 fails silently, hypernet says so:

- an unknown name, or a setting naming a missing network, is a :class:`~hypernet.errors.HypernetError`;
- a weight ``float()`` rejects is a HypernetError naming the tag (A1111 shows an error and drops all tag networks);
- ``<lora:...>`` (and its alias ``<lyco:...>``) select LoRA networks with A1111's te/unet/dyn arguments;
- tags of other types are still removed from the text, with a warning each;
- the same network named twice is applied twice, each at its own multiplier.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from hypernet.errors import HypernetError

EXTRA_NETWORK_TAG = re.compile(r"<(\w+):([^>]+)>")
"""A1111's extra-network tag: group 1 is the type (case-sensitive), group 2 the ``:``-separated arguments."""

HYPERNET_TAG_TYPE = "hypernet"
LORA_TAG_TYPES = ("lora", "lyco")  # A1111 treats <lyco:...> as <lora:...>

_T = TypeVar("_T")


@dataclass(frozen=True)
class ExtraNetworkParams:
    """The arguments of one tag, split like A1111: ``items`` in order, ``key=value`` items also in ``named``."""

    items: tuple[str, ...]
    positional: tuple[str, ...]
    named: dict[str, str]

    @classmethod
    def from_items(cls, items: Sequence[str]) -> ExtraNetworkParams:
        """Sort items into positional and named ones: an item is named only if it contains exactly one ``=``."""
        positional: list[str] = []
        named: dict[str, str] = {}
        for item in items:
            key, sep, value = item.partition("=")
            if sep and "=" not in value:
                named[key] = value
            else:
                positional.append(item)
        return cls(tuple(items), tuple(positional), named)


def parse_prompt(prompt: str) -> tuple[str, dict[str, list[ExtraNetworkParams]]]:
    """Remove every ``<type:args>`` tag from ``prompt``; return the remaining text and the tags' params by type.

    The text around a tag is left exactly as it was (``"a, <hypernet:x>, b"`` becomes ``"a, , b"``), because that is
    what A1111 encodes. Types appear in first-appearance order, each with its tags in prompt order.
    """
    found: dict[str, list[ExtraNetworkParams]] = {}

    def remove(match: re.Match[str]) -> str:
        found.setdefault(match.group(1), []).append(ExtraNetworkParams.from_items(match.group(2).split(":")))
        return ""

    return EXTRA_NETWORK_TAG.sub(remove, prompt), found


def parse_prompts(prompts: Sequence[str]) -> tuple[list[str], dict[str, list[ExtraNetworkParams]]]:
    """Remove the tags from every prompt of a batch; only the first prompt's tags count, as in A1111."""
    parsed = [parse_prompt(prompt) for prompt in prompts]
    return [text for text, _ in parsed], parsed[0][1] if parsed else {}


# =============================================================================================== hypernetworks
@dataclass(frozen=True)
class HypernetworkSelection:
    """One network to apply, in stacking order: the tag's first argument and its multiplier."""

    name: str
    multiplier: float


@dataclass(frozen=True)
class LoraSelection:
    """One ``<lora:...>`` tag: the name as written and A1111's multipliers for the text encoders and the UNet."""

    name: str
    te: float = 1.0
    unet: float = 1.0
    dyn: int | None = None


@dataclass(frozen=True)
class ParsedBatch:
    """What a batch of prompts asks for.

    ``prompts`` (tags removed) go to the text encoder; ``infotext_prompts`` are the prompts as written plus the tag the
    ``sd_hypernetwork`` setting added, which is what A1111 records in the image's infotext.
    """

    prompts: list[str]
    infotext_prompts: list[str]
    hypernetworks: list[HypernetworkSelection]
    warnings: list[str]
    loras: list[LoraSelection] = field(default_factory=list)


def hypernetwork_selections(params: Sequence[ExtraNetworkParams]) -> list[HypernetworkSelection]:
    """Name and multiplier of each ``hypernet`` tag: ``float()`` of the second argument, 1.0 when there is none.

    Any finite value ``float()`` accepts passes, as in A1111 (``" 0.7 "``, ``1e-1``, negative, above 1); a value it
    rejects raises HypernetError naming the tag instead of A1111's dropping every tag-selected network, and so do
    ``nan`` and ``inf``, which would turn every image black.
    """
    selections = []
    for tag in params:
        name = tag.items[0]
        weight = tag.items[1] if len(tag.items) > 1 else "1.0"
        try:
            multiplier = float(weight)
        except ValueError:
            raise HypernetError(
                f"The weight {weight!r} in {_tag_text(HYPERNET_TAG_TYPE, tag)} is not a number; "
                f"expected e.g. <hypernet:{name}:0.8>."
            ) from None
        if not math.isfinite(multiplier):
            raise HypernetError(f"The weight {weight!r} in {_tag_text(HYPERNET_TAG_TYPE, tag)} is not a finite number; "
                                f"expected e.g. <hypernet:{name}:0.8>.")
        selections.append(HypernetworkSelection(name, multiplier))
    return selections


def lora_selections(tags: Mapping[str, Sequence[ExtraNetworkParams]]) -> list[LoraSelection]:
    """The ``<lora:NAME:TE:UNET:DYN>`` tags (``lyco`` too, whichever type comes first first), read like A1111:
    ``te`` defaults to 1, ``unet`` to ``te`` (after a named ``te=``), ``dyn`` to none; ``te=``/``unet=``/``dyn=``
    override the positions. A value that is not a number is a HypernetError naming the tag (A1111 shows an error
    and applies no LoRA at all)."""
    selections = []
    for tag_type in [t for t in tags if t in LORA_TAG_TYPES]:
        for tag in tags[tag_type]:
            pos, named = tag.positional, tag.named
            try:
                te = float(named.get("te", pos[1] if len(pos) > 1 else 1.0))
                unet = float(named.get("unet", pos[2] if len(pos) > 2 else te))
                dyn_text = named.get("dyn", pos[3] if len(pos) > 3 else None)
                dyn = None if dyn_text is None else int(dyn_text)
            except ValueError:
                raise HypernetError(
                    f"{_tag_text(tag_type, tag)} has a value that is not a number; expected e.g. "
                    f"<lora:{tag.items[0]}:0.8>, <lora:{tag.items[0]}:0.8:0.5> or <lora:{tag.items[0]}:te=0.8:unet=0.5>."
                ) from None
            if not pos:
                raise HypernetError(f"{_tag_text(tag_type, tag)} names no network; expected <lora:NAME:WEIGHT>.")
            if not (math.isfinite(te) and math.isfinite(unet)):  # NaN/inf weights would turn every image black
                raise HypernetError(f"{_tag_text(tag_type, tag)} has a weight that is not a finite number; expected "
                                    f"e.g. <lora:{pos[0]}:0.8>.")
            selections.append(LoraSelection(pos[0], te, unet, dyn))
    return selections


def parse_batch(
    prompts: Sequence[str],
    available: Collection[str],
    *,
    sd_hypernetwork: str | None = None,
    default_multiplier: float = 1.0,
) -> ParsedBatch:
    """Select a batch's hypernetworks as A1111 does, checking every name against ``available`` (the discovered names).

    - Only the first prompt's ``<hypernet:...>`` tags count; every prompt loses all its tags.
    - ``sd_hypernetwork`` is A1111's "Add hypernetwork to prompt" setting (None or ``"None"``: off). Unless the
      first prompt already names it, it is added last at ``default_multiplier``
      (``extra_networks_default_multiplier``) and its tag is appended to every infotext prompt.
    - Negative prompts are not parsed in A1111 (a tag there is plain text for CLIP), so do not pass them here.

    Raises HypernetError for an unknown name or a weight that is not a number.
    """
    cleaned, tags = parse_prompts(prompts)
    hypernetworks = hypernetwork_selections(tags.get(HYPERNET_TAG_TYPE, []))
    for selection in hypernetworks:
        if selection.name not in available:
            raise _unknown_name_error(selection.name, available, "the prompt")

    infotext_prompts = list(prompts)
    if sd_hypernetwork and sd_hypernetwork != "None" and all(h.name != sd_hypernetwork for h in hypernetworks):
        if sd_hypernetwork not in available:
            raise _unknown_name_error(sd_hypernetwork, available, "the sd_hypernetwork setting")
        multiplier = float(default_multiplier)
        suffix = f"<{HYPERNET_TAG_TYPE}:{sd_hypernetwork}:{multiplier}>"
        infotext_prompts = [prompt + suffix for prompt in infotext_prompts]
        hypernetworks.append(HypernetworkSelection(sd_hypernetwork, multiplier))
    return ParsedBatch(cleaned, infotext_prompts, hypernetworks, _tag_warnings(prompts), lora_selections(tags))


def resolve_hypernetwork(name: str, available: Mapping[str, _T]) -> _T:
    """Look up a network by its exact, case-sensitive name (what A1111 matches); unknown names suggest the closest."""
    if name not in available:
        raise _unknown_name_error(name, available)
    return available[name]


def _unknown_name_error(name: str, available: Collection[str], where: str = "") -> HypernetError:
    unknown = f"Unknown hypernetwork {name!r}" + (f" in {where}" if where else "")
    names = sorted(available)
    if not names:
        return HypernetError(f"{unknown}; expected the name of a hypernetwork file, but none were found.")
    loose = name.strip().casefold()
    close = [n for n in names if n.strip().casefold() == loose]
    close += [n for n in difflib.get_close_matches(name, names, n=3) if n not in close]
    if close:
        hint = "did you mean " + " or ".join(repr(n) for n in close[:3]) + "? (names are exact and case-sensitive)"
    elif len(names) <= 5:
        hint = "expected one of " + ", ".join(repr(n) for n in names) + "."
    else:
        hint = f"expected one of the {len(names)} available names, none of which is similar."
    return HypernetError(f"{unknown}; {hint}")


def _tag_text(tag_type: str, params: ExtraNetworkParams) -> str:
    return f"<{tag_type}:{':'.join(params.items)}>"


def _tag_warnings(prompts: Sequence[str]) -> list[str]:
    """Say what A1111 ignores without a word: other tag types, and hypernet tags outside the batch's first prompt."""
    warnings: list[str] = []
    first_tags = parse_prompts(prompts)[1]
    first_hypernets = first_tags.get(HYPERNET_TAG_TYPE, [])
    first_loras = lora_selections(first_tags)
    for index, prompt in enumerate(prompts):
        tags = parse_prompt(prompt)[1]
        hypernets = tags.get(HYPERNET_TAG_TYPE, [])
        if index and hypernets != first_hypernets:
            warnings += [
                f"{_tag_text(HYPERNET_TAG_TYPE, p)} in prompt {index + 1} of the batch was removed without effect; "
                "only the first prompt of a batch selects hypernetworks."
                for p in hypernets
            ]
        if index and any(t in tags for t in LORA_TAG_TYPES) and lora_selections(tags) != first_loras:
            warnings.append(f"<lora:...> tags in prompt {index + 1} of the batch were removed without effect; "
                            "only the first prompt of a batch selects LoRA networks.")
        for tag_type, params in tags.items():
            if tag_type not in (HYPERNET_TAG_TYPE, *LORA_TAG_TYPES):
                warnings += [_unsupported_tag_warning(tag_type, p) for p in params]
    return list(dict.fromkeys(warnings))


def _unsupported_tag_warning(tag_type: str, params: ExtraNetworkParams) -> str:
    tag = _tag_text(tag_type, params)
    close = difflib.get_close_matches(tag_type.casefold(), [HYPERNET_TAG_TYPE, *LORA_TAG_TYPES], n=1, cutoff=0.8)
    if close:
        return f"{tag} was removed: the tag type {tag_type!r} is unknown; did you mean {close[0]!r}?"
    return f"{tag} is not supported yet and was removed."
