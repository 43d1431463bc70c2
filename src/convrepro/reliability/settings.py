"""What a resume may change: every checkpoint carries its run's settings, and ``fit --ckpt_path``
compares them with its own before anything starts.

A resume continues the checkpoint's optimiser state, learning-rate schedule, data order and
random streams, so most settings cannot change mid-way without the run silently becoming
another one (a new learning rate would be overwritten by the optimiser's state; a new batch
size would skip the wrong samples). Those are refused, in one line naming each setting and its
value in the checkpoint. The settings in :data:`MAY_CHANGE_ON_RESUME` apply from the resumed step
on; the run's ``provenance.json`` records each change (old and new value) and ``config.yaml``
keeps the values the run started with.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from fnmatch import fnmatchcase
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer

from convrepro.errors import ConfigError
from convrepro.reliability.checkpoint_io import CheckpointFile
from convrepro.reliability.distributed import WORLD_KEY, world_layout

#: Where a checkpoint keeps its run's settings (flat ``{"section.key": value}``, plain values).
SETTINGS_KEY = "convrepro_settings"

#: The config sections that say what is trained; the rest (``run``, ``ckpt_path``, the config
#: files' paths) is bookkeeping of the command.
COMPARED_SECTIONS = ("seed_everything", "trainer", "model", "data")

#: Settings a resume may change (patterns of dotted keys).
MAY_CHANGE_ON_RESUME = (
    # How long to train, and the usual remedies for a run that diverged.
    "trainer.max_epochs",
    "trainer.min_epochs",
    "trainer.max_steps",
    "trainer.min_steps",
    "trainer.max_time",
    "trainer.gradient_clip_val",
    "trainer.gradient_clip_algorithm",
    # Where and how fast it runs, and what it reports: the same computation.
    "trainer.accelerator",
    "trainer.devices",
    "trainer.num_nodes",
    "trainer.strategy*",
    "trainer.precision",
    "trainer.plugins*",
    "trainer.benchmark",
    "trainer.deterministic",
    "trainer.logger*",
    "trainer.callbacks*",
    "trainer.enable_*",
    "trainer.log_every_n_steps",
    "trainer.profiler*",
    "trainer.default_root_dir",
    "trainer.num_sanity_val_steps",
    "trainer.detect_anomaly",
    "model.channels_last",
    "model.compile",
    "model.test_protocol*",
    "data.init_args.data_dir",
    "data.init_args.download",
    "data.init_args.num_workers",
    "data.init_args.pin_memory",
    "data.init_args.persistent_workers",
    "data.init_args.device_resident",
)


def flat_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """``{"trainer.max_epochs": 3, ...}`` of a resolved config's :data:`COMPARED_SECTIONS`;
    lists (callbacks, say) stay whole values."""
    flat: dict[str, Any] = {}

    def add(prefix: str, value: Any) -> None:
        if isinstance(value, Mapping) and value:
            for key, inner in value.items():
                add(f"{prefix}.{key}", inner)
        else:
            flat[prefix] = value

    for section in COMPARED_SECTIONS:
        if section in config:
            add(section, config[section])
    return flat


class StoreSettings(Callback):
    """Puts the run's settings (:func:`flat_settings`) into every checkpoint it writes, and the
    layout of the processes that wrote it (a resume on others says what that changes)."""

    def __init__(self, settings: Mapping[str, Any]) -> None:
        self.settings = dict(settings)

    def on_save_checkpoint(
        self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        checkpoint[SETTINGS_KEY] = self.settings
        checkpoint[WORLD_KEY] = world_layout(trainer)


def changed_settings(checkpoint: CheckpointFile, settings: Mapping[str, Any]) -> dict[str, list]:
    """The settings this resume changes, ``{key: [in the checkpoint, now]}``.

    Raises a :class:`~convrepro.errors.ConfigError` naming every changed setting that cannot
    change on resume. Settings one side does not know (a checkpoint of older code) are not
    compared; nor is anything in a checkpoint saved before settings were stored.
    """
    stored = checkpoint.content.get(SETTINGS_KEY) or {}
    changed = {
        key: [stored[key], settings[key]]
        for key in sorted(stored.keys() & settings.keys())
        if stored[key] != settings[key]
    }
    refused = [
        f"{key} ({_shown(old)} in the checkpoint, {_shown(new)} now)"
        for key, (old, new) in changed.items()
        if not any(fnmatchcase(key, pattern) for pattern in MAY_CHANGE_ON_RESUME)
    ]
    if refused:
        raise ConfigError(
            f"--ckpt_path {checkpoint.path}: a resume cannot change {'; '.join(refused)}. It "
            "continues the checkpoint's optimiser, schedule and data order: resume with the "
            "checkpoint's values, or start a new run (without --ckpt_path)."
        )
    return changed


def _shown(value: Any, limit: int = 80) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= limit else f"{text[: limit - 3]}..."
