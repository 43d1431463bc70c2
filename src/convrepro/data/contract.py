"""What callbacks may rely on in a datamodule: the contract of the ``convrepro.data`` modules.

Run-lifecycle callbacks (exact resume, prediction files) work with any LightningDataModule that
has these members, ours or a user's, and do without them (no exact mid-epoch resume, sample
numbers instead of names) when it has not.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from lightning.pytorch import Trainer


@runtime_checkable
class ResumableSampler(Protocol):
    """A training sampler that can continue an epoch from a given sample."""

    def state_dict(self) -> dict[str, int]: ...

    def load_state_dict(self, state: dict[str, int]) -> None: ...


@runtime_checkable
class RunDataModule(Protocol):
    """A datamodule whose training order can be resumed and whose samples have names."""

    #: The global batch size (all processes together).
    batch_size: int
    #: The training sampler, once ``setup("fit")`` ran; ``None`` before.
    train_sampler: ResumableSampler | None

    def sample_names(self, stage: str) -> list[str] | None:
        """A name for each sample of the stage's split (a file path, ``"train/00042"``)."""
        ...


def datamodule_of(trainer: Trainer | None) -> RunDataModule | None:
    """The trainer's datamodule if it keeps the :class:`RunDataModule` contract, else ``None``."""
    datamodule: Any = getattr(trainer, "datamodule", None)
    return datamodule if isinstance(datamodule, RunDataModule) else None


def resumable_sampler(trainer: Trainer | None) -> ResumableSampler | None:
    """The datamodule's training sampler, if it can resume mid-epoch."""
    datamodule = datamodule_of(trainer)
    sampler = datamodule.train_sampler if datamodule is not None else None
    return sampler if isinstance(sampler, ResumableSampler) else None
