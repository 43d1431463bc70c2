"""Samplers that make data order a pure function of the seed, the epoch and the device layout.

Lightning's default (``DistributedSampler``) pads evaluation shards by repeating samples, which
biases DDP metrics, and cannot resume inside an epoch. The trainer therefore runs with
``use_distributed_sampler=False`` and the datamodules shard the data themselves:

* :class:`ShuffledShardSampler` (training): a fresh permutation per epoch, equal shards per rank so
  DDP ranks step together, resumable mid-epoch. It yields ``(epoch, index)`` pairs so that the
  dataset seeds each sample's augmentation from the epoch too, even inside persistent workers
  that never see ``set_epoch``.
* :class:`ShardedEvalBatchSampler` (validation/test/predict): in order, every sample exactly
  once across ranks, and the same number of batches on every rank.

Randomness comes in independent streams derived from the one user seed (:func:`derive_seed`);
each sample's augmentation draws from its own :class:`SampleRandom`, keyed by
:func:`sample_key` from ``(stream, epoch, sample)``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sized
from typing import Any

import numpy as np
import torch
from torch.utils.data import BatchSampler, Sampler

from convrepro.errors import ConfigError, SettingTypeError

# Independent random streams derived from one user seed.
SHUFFLE_STREAM = 0
AUGMENT_STREAM = 1
SPLIT_STREAM = 2
TRAIN_STEP_STREAM = 3  # dropout and other randomness inside a training step


def derive_seed(*keys: int) -> int:
    """A 64-bit seed that is a pure, well-mixed function of ``keys`` (non-negative integers).

    ``numpy.random.SeedSequence`` hashes its entropy, so nearby keys (epoch 3 vs 4, sample 41 vs
    42) give unrelated streams, unlike ``seed + epoch`` schemes where runs overlap. It costs tens
    of microseconds; per sample or per batch, :func:`sample_key` derives keys from its result.
    """
    return int(np.random.SeedSequence(keys).generate_state(1, np.uint64)[0])


_MASK64 = (1 << 64) - 1


def torch_seed(key: int) -> int:
    """A 64-bit key folded into the 32 bits that torch's CPU generators keep of a seed (they
    drop the high half, so keys that differ only there would give one and the same stream)."""
    return (key ^ (key >> 32)) & 0xFFFFFFFF


_GOLDEN_GAMMA = 0x9E3779B97F4A7C15  # SplitMix64's increment: 2^64 / golden ratio, odd


def _mix64(value: int) -> int:
    """SplitMix64's output function: a bijection of 64-bit integers in which every input bit
    changes about half of the output bits (Steele, Lea & Flood 2014, the seeder of xoshiro)."""
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK64
    return value ^ (value >> 31)


def sample_key(stream_seed: int, epoch: int, index: int) -> int:
    """The 64-bit key of one sample's (or batch's) random numbers in one epoch.

    ``stream_seed`` comes from :func:`derive_seed` (say of ``(seed, AUGMENT_STREAM)``); each
    further key goes through a full mix, so neighbouring epochs and samples get unrelated keys.
    About a microsecond, against :func:`derive_seed`'s tens: it runs once per sample.
    """
    epoch_key = _mix64((stream_seed + (epoch + 1) * _GOLDEN_GAMMA) & _MASK64)
    return _mix64((epoch_key + (index + 1) * _GOLDEN_GAMMA) & _MASK64)


class SampleRandom:
    """Counter-based random numbers of one sample: draw ``i`` is a hash of ``(key, i)``.

    It is SplitMix64 started at ``key``: no state outside this object, nothing global read or
    written, so a sample's augmentation depends on its key alone (not on the worker or process
    that loads it, or on what was drawn before), and costs a few integer operations per draw.
    """

    __slots__ = ("_state",)

    def __init__(self, key: int) -> None:
        self._state = key & _MASK64

    def bits(self) -> int:
        """The next 64 random bits."""
        self._state = (self._state + _GOLDEN_GAMMA) & _MASK64
        return _mix64(self._state)

    def uniform(self, low: float = 0.0, high: float = 1.0) -> float:
        """Uniform in ``[low, high)`` (53 random bits, as ``random.random``)."""
        return low + (high - low) * (self.bits() >> 11) * 2.0**-53

    def below(self, count: int) -> int:
        """Uniform integer in ``[0, count)``; the bias of the multiplication is below 2^-53."""
        return ((self.bits() >> 11) * count) >> 53

    def normal(self) -> float:
        """Standard normal (Box-Muller transform of two uniforms)."""
        radius = math.sqrt(-2.0 * math.log(1.0 - self.uniform()))
        return radius * math.cos(2.0 * math.pi * self.uniform())

    def permutation(self, count: int) -> list[int]:
        """A uniformly random order of ``range(count)`` (Fisher-Yates)."""
        order = list(range(count))
        for last in range(count - 1, 0, -1):
            other = self.below(last + 1)
            order[last], order[other] = order[other], order[last]
        return order


class ShuffledShardSampler(Sampler[tuple[int, int]]):
    """Training order: an epoch-seeded permutation, split into equal shards, one per rank.

    Like ``DistributedSampler(shuffle=True, drop_last=True)``, the permutation is cut to a multiple
    of ``num_replicas`` and rank ``r`` takes positions ``r, r + W, r + 2W, ...``, so every rank
    gets the same number of samples. Unlike it, the permutation is a pure function of
    ``(seed, epoch)``, and the sampler yields ``(epoch, index)`` pairs.

    Resuming: ``load_state_dict({"epoch": e, "start_index": k})`` makes epoch ``e`` skip the
    first ``k`` samples of its permutation, counted across all ranks (``k`` = optimizer steps
    done in the epoch x global batch size). The sampler itself cannot count what the training
    loop consumed (workers prefetch ahead), so the caller supplies ``k`` from the loop's
    progress. Lightning calls ``set_epoch`` at each epoch start; a call with another epoch
    drops the pending skip.
    """

    def __init__(
        self, num_samples: int, *, seed: int = 0, num_replicas: int = 1, rank: int = 0
    ) -> None:
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, {num_replicas}), got {rank}")
        if num_samples < num_replicas:
            raise ConfigError(
                f"cannot shard {num_samples} training samples over {num_replicas} ranks"
            )
        self.num_samples = num_samples
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0
        self.start_index = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the permutation of ``epoch`` (Lightning calls this at every epoch start)."""
        if epoch != self.epoch:
            self.start_index = 0
        self.epoch = epoch

    def state_dict(self) -> dict[str, int]:
        """Where the next iteration starts: ``{"epoch", "start_index"}``."""
        return {"epoch": self.epoch, "start_index": self.start_index}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume epoch ``state["epoch"]`` after ``state["start_index"]`` samples (all ranks)."""
        start_index = int(state["start_index"])
        if not 0 <= start_index <= self.num_samples:
            raise ConfigError(
                f"start_index {start_index} is outside this {self.num_samples}-sample epoch"
            )
        self.epoch = int(state["epoch"])
        self.start_index = start_index

    def __iter__(self) -> Iterator[tuple[int, int]]:
        generator = torch.Generator().manual_seed(
            torch_seed(derive_seed(self.seed, SHUFFLE_STREAM, self.epoch))
        )
        order = torch.randperm(self.num_samples, generator=generator)
        order = order[: len(self) * self.num_replicas]
        remaining = order[self.start_index :]
        # Equal shards even when start_index came from a run with another world size.
        remaining = remaining[: len(remaining) // self.num_replicas * self.num_replicas]
        for index in remaining[self.rank :: self.num_replicas].tolist():
            yield self.epoch, index

    def __len__(self) -> int:
        # The full epoch, also when resuming: Lightning counts the skipped batches itself.
        return self.num_samples // self.num_replicas


class ShardedEvalBatchSampler(BatchSampler):
    """Evaluation batches: in order, each sample exactly once, equal batch counts on all ranks.

    Rank ``r`` takes positions ``r, r + W, r + 2W, ...`` of ``sampler`` (no padding, so shard
    sizes may differ by one). Batches hold ``batch_size`` samples except the last; if one rank's
    shard would need one batch fewer than the others, its last full batch gives up one sample
    to a final batch of one. Equal batch counts keep the ranks in step for anything that
    communicates once per batch (``self.log(..., on_step=True, sync_dist=True)``, an
    ``all_gather`` in a step): with one batch more on one rank such a collective is mismatched,
    which hangs (NCCL) or aborts (gloo).

    The signature follows ``BatchSampler`` so that Lightning can re-create it for prediction (it
    swaps in its own in-order ``sampler`` and forces ``drop_last=False``).
    """

    def __init__(
        self,
        sampler: Sampler[int] | Sized,
        batch_size: int,
        drop_last: bool = False,
        *,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        if drop_last:
            raise ValueError("evaluation must see every sample: drop_last=True is not supported")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, {num_replicas}), got {rank}")
        super().__init__(sampler, batch_size, drop_last=False)
        self.num_replicas = num_replicas
        self.rank = rank
        total = len(sampler)
        self.num_batches = math.ceil(math.ceil(total / num_replicas) / batch_size)
        smallest_shard = total // num_replicas
        if smallest_shard < self.num_batches:
            raise ConfigError(
                f"cannot split {total} samples over {num_replicas} ranks into the same number "
                f"of non-empty batches of at most {batch_size}: use fewer devices or a larger "
                "batch size"
            )

    def __iter__(self) -> Iterator[list[int]]:
        shard = list(self.sampler)[self.rank :: self.num_replicas]
        ends = [min((b + 1) * self.batch_size, len(shard)) for b in range(self.num_batches)]
        if self.num_batches > 1 and ends[-2] == ends[-1]:
            ends[-2] -= 1  # this shard is one batch short: move one sample into the last batch
        start = 0
        for end in ends:
            yield shard[start:end]
            start = end

    def __len__(self) -> int:
        return self.num_batches


def check_val_size(val_size: int | float) -> None:
    """Refuse a ``data.val_size`` that is neither a count >= 0 nor a fraction in [0, 1)."""
    if isinstance(val_size, bool) or not isinstance(val_size, int | float):
        raise SettingTypeError(f"data.val_size must be a count or a fraction, got {val_size!r}")
    if isinstance(val_size, float) and not 0.0 <= val_size < 1.0:
        raise ConfigError(
            f"data.val_size={val_size} as a fraction must be in [0, 1); "
            "give a whole number for a count of images"
        )
    if isinstance(val_size, int) and val_size < 0:
        raise ConfigError(f"data.val_size must not be negative, got {val_size}")
