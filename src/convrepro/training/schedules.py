"""Learning-rate schedules that torch does not ship in one piece."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, MultiStepLR

from convrepro.errors import ConfigError


class WarmupCosineLR(LambdaLR):
    """Linear warm-up to the base LR, then cosine decay to ``min_factor`` x the base LR.

    Stepped once per optimiser step: of ``T`` steps (0 to T-1), the first
    ``round(warmup_fraction * T)`` rise linearly from ``warmup_start_factor``, the next is at the
    full LR, and the cosine reaches ``min_factor`` exactly at step T-1, the last. With no warm-up
    steps, step 0 is at the full LR. The total is only known once the trainer has seen the
    data, so ``ImageClassifier`` calls :meth:`set_total_steps` right after building it.

    A resumed run that is longer or shorter than the checkpoint's (``trainer.max_epochs``
    changed) keeps its new length: the cosine is re-planned over it from the step reached, and
    the console says so (the checkpoint's saved length would otherwise win and train every
    extra step at ``min_factor``).

    Args:
        optimizer: The wrapped optimiser.
        warmup_fraction: Share of all steps spent warming up (e.g. 0.05 = the first 5%).
        warmup_start_factor: LR multiplier at step 0.
        min_factor: LR multiplier reached at the last step.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        warmup_fraction: float = 0.05,
        warmup_start_factor: float = 0.1,
        min_factor: float = 0.0,
    ) -> None:
        if not 0.0 <= warmup_fraction < 1.0:
            raise ConfigError(f"warmup_fraction must be in [0, 1), got {warmup_fraction}")
        self.warmup_fraction = warmup_fraction
        self.warmup_start_factor = warmup_start_factor
        self.min_factor = min_factor
        self.total_steps: int | None = None
        super().__init__(optimizer, self._factor)

    def set_total_steps(self, total_steps: int) -> None:
        """Fix the schedule's length (number of optimiser steps in the whole run); the current
        step's learning rate follows it at once."""
        if total_steps < 1:
            raise ConfigError(f"total_steps must be >= 1, got {total_steps}")
        self.total_steps = total_steps
        self._apply_current_factor()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        planned = self.total_steps
        super().load_state_dict(state_dict)
        saved = self.total_steps
        if planned is None or planned == saved:
            return
        self.total_steps = planned
        self._apply_current_factor()
        rank_zero_info(
            f"WarmupCosineLR: the run now has {planned} optimiser steps, its checkpoint "
            f"{saved}; the schedule is re-planned over {planned} from step {self.last_epoch} "
            f"(learning-rate factor now {self._factor(self.last_epoch):.4g})"
        )

    def _apply_current_factor(self) -> None:
        factor = self._factor(self.last_epoch)
        for group, base_lr in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            group["lr"] = base_lr * factor
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def _factor(self, step: int) -> float:
        if self.total_steps is None:  # LambdaLR evaluates step 0 before set_total_steps
            return self.warmup_start_factor if self.warmup_fraction > 0 else 1.0
        warmup_steps = round(self.warmup_fraction * self.total_steps)
        if step < warmup_steps:
            progress = step / warmup_steps
            return self.warmup_start_factor + (1.0 - self.warmup_start_factor) * progress
        decay_steps = max(1, self.total_steps - 1 - warmup_steps)
        progress = min(1.0, (step - warmup_steps) / decay_steps)
        return self.min_factor + (1.0 - self.min_factor) * 0.5 * (
            1.0 + math.cos(math.pi * progress)
        )


class WeightsMultiStepLR(MultiStepLR):
    """:class:`~torch.optim.lr_scheduler.MultiStepLR` that lowers only the weights' learning
    rates: the optimiser groups whose name ends in ``group_suffix``; the others keep theirs.

    cuda-convnet's methodology (the header of ``layer-params-conv-local-11pct.cfg``) lowers
    ``epsW`` by 10 and leaves ``epsB``; MultiStepLR would lower every group, biases too.
    :meth:`ConvLocalNet.parameter_groups <convrepro.models.ConvLocalNet.parameter_groups>`
    names its groups ``conv1.weight``, ``conv1.bias``, ...

    Args:
        optimizer: The wrapped optimiser; at least one of its groups must match.
        milestones: Epochs at which the matching groups' learning rate is multiplied by
            ``gamma``.
        gamma: The factor.
        group_suffix: Which groups are lowered, by the end of their ``name``.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        milestones: Iterable[int],
        gamma: float = 0.1,
        group_suffix: str = ".weight",
    ) -> None:
        names = [str(group.get("name", "")) for group in optimizer.param_groups]
        self.lowered = [name.endswith(group_suffix) for name in names]
        if not any(self.lowered):
            raise ConfigError(
                f"WeightsMultiStepLR lowers the optimiser groups named '*{group_suffix}', and "
                f"this model's are {names}: use a backbone whose parameter_groups() names them "
                "so (ConvLocalNet), set group_suffix, or use "
                "torch.optim.lr_scheduler.MultiStepLR to lower every group"
            )
        super().__init__(optimizer, milestones, gamma)

    def get_lr(self) -> list[float | Tensor]:
        return self._kept_unlowered(
            super().get_lr(), [g["lr"] for g in self.optimizer.param_groups]
        )

    def _get_closed_form_lr(self) -> list[float | Tensor]:  # step(epoch): from the base rates
        return self._kept_unlowered(super()._get_closed_form_lr(), self.base_lrs)

    def _kept_unlowered(
        self, dropped: list[float | Tensor], kept: list[float | Tensor]
    ) -> list[float | Tensor]:
        return [d if lower else k for d, k, lower in zip(dropped, kept, self.lowered, strict=True)]
