"""A1111's schedule strings such as ``"5e-5:100, 5e-6:1500, 5e-7"``.

The same syntax sets the learning rate and the gradient-clipping value. Each ``rate:step`` pair holds its value
until that optimizer step; a bare value (or ``rate:-1``) holds until ``max_steps``. Resuming at ``cur_step`` skips
the pairs that already ended. When the learning-rate schedule runs out, A1111 stops training, even before
``max_steps``; the trainer reads that from :attr:`LearnRateSchedule.finished`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from hypernet.errors import HypernetError

if TYPE_CHECKING:
    import torch

_EXAMPLE = '"0.001:100, 0.00001:1000, 1e-5"'


@dataclass(frozen=True)
class Phase:
    """One ``rate:step`` piece: ``value`` applies to the steps before ``end_step``."""

    value: float
    end_step: int


class LearnRateSchedule:
    """A parsed schedule and the phase training is in.

    Call :meth:`step` (or :meth:`apply`) with the current optimizer step before every micro-batch, as A1111 does.
    It moves at most one phase per call, so two pairs ending at the same step still give the second pair one step
    (``"0.005:10, 0.001:10"`` trains step 10 at 0.001 and stops at step 11), exactly like A1111.
    """

    def __init__(self, phases: Sequence[Phase]):
        if not phases:
            raise ValueError("a schedule needs at least one phase")
        self.phases: tuple[Phase, ...] = tuple(phases)
        self.finished = False
        self._index = 0

    @classmethod
    def parse(cls, text: str, max_steps: int, cur_step: int = 0, *, field: str = "learn_rate") -> LearnRateSchedule:
        """Parse ``text`` for a run that ends at ``max_steps`` and resumes at ``cur_step``.

        ``field`` names the setting in error messages (``"learn_rate"`` or ``"clip_grad_value"``). Items are
        read left to right the way A1111 reads them: parsing stops at the first bare value, ``-1`` step or step
        beyond ``max_steps``, so anything after it is never looked at.
        """
        phases: list[Phase] = []
        skipped: list[str] = []
        for item in text.split(","):
            if not item.strip():
                continue
            parts = item.split(":")
            if len(parts) != 2:
                # One part, or three and more: A1111 takes the first part as a rate until max_steps.
                phases.append(Phase(_rate(parts[0], item, text, field), max_steps))
                break
            step = _step(parts[1], item, text, field)
            if step > cur_step:
                phases.append(Phase(_rate(parts[0], item, text, field), min(step, max_steps)))
                if step > max_steps:
                    break
            elif step == -1:
                phases.append(Phase(_rate(parts[0], item, text, field), max_steps))
                break
            else:
                skipped.append(item.strip())

        if phases:
            return cls(phases)
        if not skipped:
            raise HypernetError(
                f'{field} "{text}" holds no rate; expected a number such as "1e-5" or rate:step pairs such as '
                f"{_EXAMPLE}."
            )
        pieces = ", ".join(f'"{piece}"' for piece in skipped)
        raise HypernetError(
            f'{field} "{text}" has no phase ending after step {cur_step} ({pieces} end at or before it); expected a '
            f'pair whose step is above {cur_step}, a "rate:-1" pair or a bare rate.'
        )

    @property
    def value(self) -> float:
        """The learning rate (or clip value) of the current phase; after the end it stays at the last one."""
        return self.phases[self._index].value

    @property
    def end_step(self) -> int:
        """The step at which the current phase ends."""
        return self.phases[self._index].end_step

    def step(self, step: int) -> bool:
        """Move on once ``step`` reaches the current phase's end; True when a new value takes effect.

        With no phase left, :attr:`finished` becomes True and the value stays.
        """
        if step < self.end_step:
            return False
        if self._index + 1 == len(self.phases):
            self.finished = True
            return False
        self._index += 1
        return True

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> None:
        """:meth:`step`, then write a new value into every parameter group of ``optimizer``."""
        if self.step(step):
            for group in optimizer.param_groups:
                group["lr"] = self.value


def _step(text: str, item: str, schedule: str, field: str) -> int:
    # int() like A1111: surrounding spaces are fine, "100.0" and "1e3" are not.
    try:
        return int(text)
    except ValueError:
        raise HypernetError(
            f'{field} "{schedule}" has the step "{text.strip()}" in "{item.strip()}", which is not a whole number; '
            f"expected rate:step pairs such as {_EXAMPLE}."
        ) from None


def _rate(text: str, item: str, schedule: str, field: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise HypernetError(
            f'{field} "{schedule}" has the rate "{text.strip()}" in "{item.strip()}", which is not a number; '
            f"expected rate:step pairs such as {_EXAMPLE}."
        ) from None
