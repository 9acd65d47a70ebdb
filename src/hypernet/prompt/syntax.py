"""A1111 prompt syntax: prompt editing and alternation per step, emphasis weights, and 75-token chunks.

Reproduces the behaviour of A1111 v1.10 (``modules/prompt_parser.py`` and ``sd_hijack_clip.tokenize_line``) so that a
prompt written for A1111 conditions the model the same way here:

- ``[from:to:when]``, ``[to:when]``, ``[from::when]`` switch text at a step; ``[a|b]`` alternates every step.
- ``(word)``, ``(word:1.3)``, ``[word]`` and the escapes ``\\( \\) \\[ \\] \\\\`` set per-token weights.
- ``BREAK`` starts a new 75-token chunk.

Everything here is pure Python; the tokenizer is a callable, so a real ``CLIPTokenizer`` plugs in unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from hypernet.errors import HypernetError

# A1111's grammar terminals, byte for byte in behaviour: ``plain`` is any run of characters other than ``\[]():|``,
# where a backslash escapes any character but a newline; numbers are lark's SIGNED_NUMBER (ASCII digits only).
_PLAIN = re.compile(r"(?:[^\\\[\]():|]|\\.)+")
_NUMBER = r"[+-]?(?:[0-9]+[eE][+-]?[0-9]+|(?:[0-9]+\.[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|[0-9]+)"
_WHEN = re.compile(rf"\s*({_NUMBER})\s*\]")  # the end of a prompt edit: ``[WHITESPACE] NUMBER [WHITESPACE] "]"``
# Characters that may stand alone outside any construct (A1111 keeps them as literal text).
_STRAY = "[]():"
# Brackets nest this deep at most; the parser recurses per level, and real prompts stay far below.
_MAX_NESTING = 100


# =============================================================================================== schedules
@dataclass(frozen=True)
class _Scheduled:
    """``[before:after:when]``; ``before`` is empty for ``[after:when]``."""

    before: tuple[_Node, ...]
    after: tuple[_Node, ...]
    when: str


@dataclass(frozen=True)
class _Alternate:
    """``[a|b|...]``: one option per step, in turn."""

    options: tuple[tuple[_Node, ...], ...]


_Node = str | _Scheduled | _Alternate


class _Unparsable(Exception):
    """The prompt does not match A1111's grammar; A1111 then uses the prompt unchanged at every step."""


def prompt_schedules(
    prompts: Sequence[str], steps: int, *, use_old_scheduling: bool = False
) -> list[list[tuple[int, str]]]:
    """Per prompt, the ``(end_step, text)`` pairs to sample with: ``text`` applies up to and including ``end_step``.

    Same result as A1111's ``get_learned_conditioning_prompt_schedules(prompts, steps)``:

    - ``when`` written with a ``.`` is a fraction of ``steps`` (``[b:.5]``, ``[b:1.0]``), otherwise a step number;
      ``use_old_scheduling=True`` gives A1111's "old prompt editing timelines" setting instead (a fraction if < 1).
    - ``[a|b]`` alternates on every step, so its prompt gets one entry per step.
    - A prompt that does not fit the grammar (e.g. a ``|`` outside brackets) is used unchanged for all steps.

    >>> prompt_schedules(["a [b:c:3] d"], 10)
    [[(3, 'a b d'), (10, 'a c d')]]
    """
    if steps < 1:
        raise HypernetError(f"steps is {steps}; expected a whole number of sampling steps of at least 1.")
    cache: dict[str, list[tuple[int, str]]] = {}
    for prompt in prompts:
        if prompt not in cache:
            cache[prompt] = _schedule(prompt, steps, use_old_scheduling)
    return [list(cache[prompt]) for prompt in prompts]


def _schedule(prompt: str, steps: int, use_old_scheduling: bool) -> list[tuple[int, str]]:
    try:
        nodes = _parse_top_level(prompt)
    except _Unparsable:
        return [(steps, prompt)]
    ends = {steps}
    _collect_end_steps(nodes, steps, use_old_scheduling, ends)
    return [(end, _render(nodes, end, steps, use_old_scheduling)) for end in sorted(ends)]


def _switch_step(when: str, steps: int, use_old_scheduling: bool) -> int:
    """The last step at which ``[before:after:when]`` still shows ``before``."""
    value = float(when)
    if use_old_scheduling:
        value = value * steps if value < 1 else value
    elif "." in when:
        value *= steps
    return int(min(steps, value))  # min first: ``1e999`` means "never switch", not an overflow


def _collect_end_steps(nodes: Sequence[_Node], steps: int, old: bool, ends: set[int]) -> None:
    for node in nodes:
        if isinstance(node, _Scheduled):
            switch = _switch_step(node.when, steps, old)
            if switch >= 1:
                ends.add(switch)
            _collect_end_steps(node.before, steps, old, ends)
            _collect_end_steps(node.after, steps, old, ends)
        elif isinstance(node, _Alternate):
            ends.update(range(1, steps + 1))
            for option in node.options:
                _collect_end_steps(option, steps, old, ends)


def _render(nodes: Sequence[_Node], step: int, steps: int, old: bool) -> str:
    parts: list[str] = []
    for node in nodes:
        if isinstance(node, str):
            parts.append(node)
        elif isinstance(node, _Scheduled):
            chosen = node.before if step <= _switch_step(node.when, steps, old) else node.after
            parts.append(_render(chosen, step, steps, old))
        else:
            parts.append(_render(node.options[(step - 1) % len(node.options)], step, steps, old))
    return "".join(parts)


# ------------------------------------------------------------------------------------------------ parser
# A1111 parses with lark's Earley parser:
#   start: (prompt | /[][():]/+)*      prompt: (emphasized | scheduled | alternate | plain | WHITESPACE)*
# Inside brackets everything must be well formed, so a construct's extent and kind follow from its separators.
# Outside brackets a bracket that opens no well-formed construct is literal text. Where one does open a construct,
# lark picks the construct, which is what taking it greedily from the left reproduces. The exception: a construct
# directly followed by a stray bracket or colon (``[a: 3][``) is ambiguous, and lark's pick there depends on
# Python's string-hash seed, so A1111 itself varies from run to run; we always take the construct.


def _parse_top_level(text: str) -> tuple[_Node, ...]:
    nodes: list[_Node] = []
    pos = 0
    while pos < len(text):
        char = text[pos]
        if char in "([":
            try:
                construct, pos = _parse_construct(text, pos, depth=1)
            except _Unparsable:
                nodes.append(char)
                pos += 1
            else:
                nodes.extend(construct)
        elif char in _STRAY:
            nodes.append(char)
            pos += 1
        else:
            match = _PLAIN.match(text, pos)
            if match is None:  # "|" outside brackets, or a backslash escaping nothing
                raise _Unparsable
            nodes.append(match.group())
            pos = match.end()
    return tuple(nodes)


def _parse_prompt(text: str, pos: int, depth: int) -> tuple[tuple[_Node, ...], int]:
    """A well-formed run up to the next separator or closing bracket (or the end); returns it and that position."""
    nodes: list[_Node] = []
    while pos < len(text) and text[pos] not in ":|)]":
        if text[pos] in "([":
            construct, pos = _parse_construct(text, pos, depth + 1)
            nodes.extend(construct)
        else:
            match = _PLAIN.match(text, pos)
            if match is None:
                raise _Unparsable
            nodes.append(match.group())
            pos = match.end()
    return tuple(nodes), pos


def _expect(text: str, pos: int, char: str) -> int:
    if pos >= len(text) or text[pos] != char:
        raise _Unparsable
    return pos + 1


def _parse_construct(text: str, pos: int, depth: int) -> tuple[tuple[_Node, ...], int]:
    """The emphasis, prompt edit or alternation opening at ``text[pos]``, as nodes, and the position after it."""
    if depth > _MAX_NESTING:
        raise HypernetError(f"The prompt nests brackets more than {_MAX_NESTING} levels deep; expected fewer levels.")
    opening = text[pos]
    first, sep = _parse_prompt(text, pos + 1, depth)
    if opening == "(":
        if sep < len(text) and text[sep] == ":":
            weight, sep = _parse_prompt(text, sep + 1, depth)
            end = _expect(text, sep, ")")
            return ("(", *first, ":", *weight, ")"), end
        return ("(", *first, ")"), _expect(text, sep, ")")
    if sep >= len(text):
        raise _Unparsable
    if text[sep] == "]":
        return ("[", *first, "]"), sep + 1
    if text[sep] == "|":
        options = [first]
        while text[sep] == "|":
            option, sep = _parse_prompt(text, sep + 1, depth)
            options.append(option)
            if sep >= len(text):
                raise _Unparsable
        end = _expect(text, sep, "]")
        return (_Alternate(tuple(options)),), end
    if text[sep] != ":":  # a ")" closing a "["
        raise _Unparsable
    when = _WHEN.match(text, sep + 1)
    if when is not None:
        return (_Scheduled((), first, when.group(1)),), when.end()
    after, sep = _parse_prompt(text, sep + 1, depth)
    when = _WHEN.match(text, sep + 1) if sep < len(text) and text[sep] == ":" else None
    if when is None:
        raise _Unparsable
    return (_Scheduled(first, after, when.group(1)),), when.end()


# =============================================================================================== emphasis
BREAK_WEIGHT = -1.0
"""The weight that marks a ``BREAK`` entry in :func:`parse_prompt_attention` output."""

_ROUND_MULTIPLIER = 1.1
_SQUARE_MULTIPLIER = 1 / 1.1

_ATTENTION_TOKEN = re.compile(
    r"""
      \\[()\[\]\\]                          # an escaped bracket or backslash: the literal character
    | \\                                    # any other backslash: dropped
    | [(\[]                                 # opening bracket
    | :\s*(?P<weight>[+-]?[.\d]+)\s*\)      # ":1.3)" closes a round bracket with that weight
    | [)\]]                                 # closing bracket
    | [^\\()\[\]:]+                         # text
    | :                                     # a colon that is not a weight
    """,
    re.VERBOSE,
)
_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)


def parse_prompt_attention(text: str) -> list[tuple[str, float]]:
    """Split a prompt into ``(text, weight)`` runs the way A1111's emphasis does, merging neighbours of equal weight.

    ``(x)`` multiplies by 1.1, ``(x:1.3)`` by 1.3, ``[x]`` divides by 1.1; unclosed brackets apply to the end.
    ``BREAK`` becomes its own ``("BREAK", -1.0)`` entry (inside brackets its weight is scaled too, and it no longer
    acts as a break, as in A1111).

    >>> parse_prompt_attention("an (important) word")
    [('an ', 1.0), ('important', 1.1), (' word', 1.0)]
    """
    texts: list[str] = []
    weights: list[float] = []  # changes while brackets close
    round_starts: list[int] = []
    square_starts: list[int] = []

    def multiply_from(start: int, multiplier: float) -> None:
        for index in range(start, len(weights)):
            weights[index] *= multiplier

    def append(text: str, weight: float) -> None:
        texts.append(text)
        weights.append(weight)

    for match in _ATTENTION_TOKEN.finditer(text):
        token, weight = match.group(), match.group("weight")
        if token.startswith("\\"):
            append(token[1:], 1.0)
        elif token == "(":
            round_starts.append(len(texts))
        elif token == "[":
            square_starts.append(len(texts))
        elif weight is not None and round_starts:
            multiply_from(round_starts.pop(), _emphasis_weight(weight, token))
        elif token == ")" and round_starts:
            multiply_from(round_starts.pop(), _ROUND_MULTIPLIER)
        elif token == "]" and square_starts:
            multiply_from(square_starts.pop(), _SQUARE_MULTIPLIER)
        else:
            for index, part in enumerate(_BREAK.split(token)):
                if index:
                    append("BREAK", BREAK_WEIGHT)
                append(part, 1.0)

    for start in round_starts:
        multiply_from(start, _ROUND_MULTIPLIER)
    for start in square_starts:
        multiply_from(start, _SQUARE_MULTIPLIER)

    merged: list[tuple[str, float]] = []
    for run_text, run_weight in zip(texts, weights) if texts else [("", 1.0)]:
        if merged and merged[-1][1] == run_weight:
            merged[-1] = (merged[-1][0] + run_text, run_weight)
        else:
            merged.append((run_text, run_weight))
    return merged


def _emphasis_weight(weight: str, token: str) -> float:
    try:
        return float(weight)
    except ValueError:
        raise HypernetError(
            f"The emphasis weight {weight!r} in {token!r} is not a number; expected e.g. (word:1.2)."
        ) from None


# =============================================================================================== chunks
@dataclass(frozen=True)
class PromptChunk:
    """One text-encoder input: ``chunk_length + 2`` token ids (start, text, end, padding) and a weight per id."""

    tokens: tuple[int, ...]
    multipliers: tuple[float, ...]
    fixes: tuple[tuple[int, str], ...] = ()
    """Embeddings to write in: ``(offset after the start token, name)``; their ids here are placeholders (0)."""


FindEmbedding = Callable[[Sequence[int], int], "tuple[str, int, int] | None"]
"""``(tokens, position) -> (name, tokens the name takes, vectors)`` of the embedding named there, or None."""


class ChunkedPrompt(NamedTuple):
    """The chunks of one prompt, and the token count A1111 shows next to the prompt box."""

    chunks: list[PromptChunk]
    token_count: int


def chunk_prompt(
    text: str,
    tokenize: Callable[[str], Sequence[int]],
    *,
    bos_id: int,
    eos_id: int,
    comma_id: int | None,
    pad_id: int | None = None,
    chunk_length: int = 75,
    comma_padding_backtrack: int = 20,
    find_embedding: FindEmbedding | None = None,
) -> ChunkedPrompt:
    """Tokenize a prompt into A1111's fixed-size chunks, so long prompts and ``BREAK`` encode as in A1111.

    ``tokenize`` maps text to token ids without start/end tokens; for a ``transformers`` CLIP tokenizer use
    ``lambda s: tok(s, add_special_tokens=False, truncation=False)["input_ids"]`` with
    ``comma_id=tok.get_vocab().get(",</w>")``. Emphasis runs are tokenized separately, as A1111 does.

    Each chunk holds up to ``chunk_length`` text tokens between ``bos_id`` and ``eos_id``, then ``pad_id`` to the
    full length (default ``eos_id`` as in SD1; SD2's OpenCLIP pads with 0). When a chunk fills up and its last
    comma is at most ``comma_padding_backtrack`` tokens back, the text after that comma moves to the next chunk
    (0 turns this off).

    ``find_embedding`` names textual-inversion embeddings: each takes as many positions as it has vectors (with
    its run's weight), is never split across chunks, and is recorded in the chunk's ``fixes``, as in A1111.
    """
    if chunk_length < 1:
        raise HypernetError(f"chunk_length is {chunk_length}; expected at least 1 token per chunk.")
    chunker = _Chunker(chunk_length, comma_id, comma_padding_backtrack)
    for run_text, weight in parse_prompt_attention(text):
        if run_text == "BREAK" and weight == BREAK_WEIGHT:
            chunker.close_chunk()
        else:
            tokens = list(tokenize(run_text))
            position = 0
            while position < len(tokens):
                found = find_embedding(tokens, position) if find_embedding else None
                chunker.add(tokens[position], weight, None if found is None else (found[0], found[2]))
                position += 1 if found is None else found[1]
    chunker.finish()

    pad = eos_id if pad_id is None else pad_id
    chunks = []
    for tokens, multipliers, fixes in chunker.chunks:
        padding = chunk_length - len(tokens)
        chunks.append(
            PromptChunk(
                tokens=(bos_id, *tokens, eos_id, *([pad] * padding)),
                multipliers=(1.0, *multipliers, *([1.0] * padding), 1.0),
                fixes=tuple(fixes),
            )
        )
    return ChunkedPrompt(chunks, chunker.token_count)


class _Chunker:
    """A1111's chunk filling: a chunk closes when full, at ``BREAK``, or early at a comma near its end."""

    def __init__(self, chunk_length: int, comma_id: int | None, backtrack: int) -> None:
        self.chunk_length = chunk_length
        self.comma_id = comma_id
        self.backtrack = backtrack
        self.chunks: list[tuple[list[int], list[float], list[tuple[int, str]]]] = []
        self.tokens: list[int] = []
        self.multipliers: list[float] = []
        self.fixes: list[tuple[int, str]] = []
        self.last_comma = -1
        self.token_count = 0

    def close_chunk(self, is_last: bool = False) -> None:
        # A1111 counts a full chunk_length for every chunk but the last, even one cut short at a comma or BREAK.
        self.token_count += len(self.tokens) if is_last else self.chunk_length
        self.chunks.append((self.tokens, self.multipliers, self.fixes))
        self.tokens, self.multipliers, self.fixes, self.last_comma = [], [], [], -1

    def add(self, token: int, weight: float, embedding: tuple[str, int] | None = None) -> None:
        """Add a token, or the embedding ``(name, vectors)`` whose name starts with it. As coded in A1111, text
        moved to the next chunk at a comma leaves its embeddings' fixes behind in the closed chunk."""
        if token == self.comma_id:
            self.last_comma = len(self.tokens)
        elif self._comma_near_end():
            cut = self.last_comma + 1
            moved = self.tokens[cut:], self.multipliers[cut:]
            del self.tokens[cut:], self.multipliers[cut:]
            self.close_chunk()
            self.tokens, self.multipliers = moved
        if len(self.tokens) == self.chunk_length:
            self.close_chunk()
        if embedding is None:
            self.tokens.append(token)
            self.multipliers.append(weight)
            return
        name, vectors = embedding
        if len(self.tokens) + vectors > self.chunk_length:
            self.close_chunk()
        self.fixes.append((len(self.tokens), name))
        self.tokens += [0] * vectors
        self.multipliers += [weight] * vectors

    def _comma_near_end(self) -> bool:
        return (
            self.backtrack != 0
            and len(self.tokens) == self.chunk_length
            and self.last_comma != -1
            and len(self.tokens) - self.last_comma <= self.backtrack
        )

    def finish(self) -> None:
        if self.tokens or not self.chunks:
            self.close_chunk(is_last=True)
