"""A1111's extra-network tags ``<hypernet:NAME:WEIGHT>``: which hypernetworks a batch uses, and the text left for CLIP.

Reproduces A1111 v1.10 (``modules/extra_networks.py`` and ``extra_networks_hypernet.py``), so prompts and infotexts
written for A1111 select the same networks at the same multipliers. Where A1111 fails silently, hypernet says so:

- an unknown name, or a setting naming a missing network, is a :class:`~hypernet.errors.HypernetError`;
- a weight ``float()`` rejects is a HypernetError naming the tag (A1111 shows an error and drops all tag networks);
- tags of other types (``<lora:...>``) are still removed from the text, with a warning each;
- the same network named twice is applied twice, each at its own multiplier.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from hypernet.errors import HypernetError

EXTRA_NETWORK_TAG = re.compile(r"<(\w+):([^>]+)>")
"""A1111's extra-network tag: group 1 is the type (case-sensitive), group 2 the ``:``-separated arguments."""

HYPERNET_TAG_TYPE = "hypernet"

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
class ParsedBatch:
    """What a batch of prompts asks for.

    ``prompts`` (tags removed) go to the text encoder; ``infotext_prompts`` are the prompts as written plus the tag the
    ``sd_hypernetwork`` setting added, which is what A1111 records in the image's infotext.
    """

    prompts: list[str]
    infotext_prompts: list[str]
    hypernetworks: list[HypernetworkSelection]
    warnings: list[str]


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
    return ParsedBatch(cleaned, infotext_prompts, hypernetworks, _tag_warnings(prompts))


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
    first_hypernets = parse_prompts(prompts)[1].get(HYPERNET_TAG_TYPE, [])
    for index, prompt in enumerate(prompts):
        tags = parse_prompt(prompt)[1]
        hypernets = tags.get(HYPERNET_TAG_TYPE, [])
        if index and hypernets != first_hypernets:
            warnings += [
                f"{_tag_text(HYPERNET_TAG_TYPE, p)} in prompt {index + 1} of the batch was removed without effect; "
                "only the first prompt of a batch selects hypernetworks."
                for p in hypernets
            ]
        for tag_type, params in tags.items():
            if tag_type != HYPERNET_TAG_TYPE:
                warnings += [_unsupported_tag_warning(tag_type, p) for p in params]
    return list(dict.fromkeys(warnings))


def _unsupported_tag_warning(tag_type: str, params: ExtraNetworkParams) -> str:
    tag = _tag_text(tag_type, params)
    if difflib.get_close_matches(tag_type.casefold(), [HYPERNET_TAG_TYPE], cutoff=0.8):
        return f"{tag} was removed: the tag type {tag_type!r} is unknown; did you mean {HYPERNET_TAG_TYPE!r}?"
    return f"{tag} is not supported yet and was removed."
