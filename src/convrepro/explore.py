"""Looking inside models, data and ablation results: what the notebooks in ``notebooks/`` show.

* Models: parameter counts, FLOPs and a layer table (layer, output shape, parameters), measured
  on the ``meta`` device, so even VGG-E at 224 px costs no memory and well under a second.
* Data: a datamodule built from an experiment config, the labels of a split without decoding
  images, class-balance bars, de-normalised image grids, and the augmented versions of one
  training image exactly as the training DataLoader produces them epoch by epoch.
* Ablations: a made-up finished ablation in the runner's on-disk format (for demos and tests),
  and a W&B group downloaded into that format, so the report code reads either like a real one.

Figures are :class:`matplotlib.figure.Figure` objects made without ``pyplot`` (no global state);
Jupyter shows them when they are the value of a cell, scripts call ``figure.savefig``.
"""

from __future__ import annotations

import csv
import importlib
import inspect
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import yaml
from matplotlib.figure import Figure
from PIL import Image
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

if TYPE_CHECKING:  # the model helpers need neither Lightning nor SciPy: import them lazily
    from convrepro.ablate.spec import AblationSpec
    from convrepro.data.base import BaseImageDataModule, SplitView

# -- models ----------------------------------------------------------------------------------

_NUMBER = re.compile(r"[+-]?[\d,]*\.?\d+( ?%)?")


@dataclass(frozen=True)
class LayerRow:
    """One leaf module as a forward pass runs it."""

    name: str  # qualified name, e.g. "features.0"
    kind: str  # class name, e.g. "Conv2d"
    output_shape: tuple[int, ...]  # without the batch dimension
    params: int  # parameters this module owns (not its children's)


def count_parameters(model: nn.Module) -> int:
    """All parameters of ``model`` (trainable or not); works on the ``meta`` device."""
    return sum(p.numel() for p in model.parameters())


def _example_input(model: nn.Module, input_size: int) -> Tensor:
    device = next(model.parameters()).device
    return torch.zeros(1, 3, input_size, input_size, device=device)


def count_flops(model: nn.Module, input_size: int = 224) -> int:
    """FLOPs of one forward pass of one ``input_size`` x ``input_size`` RGB image.

    Counted by :class:`torch.utils.flop_counter.FlopCounterMode`: 2 FLOPs per multiply-add of the
    convolutions and matrix multiplies. Biases, ReLU, pooling and LRN are not counted (well under
    1% for these nets); halve the result for multiply-adds (MACs), the unit of torchvision's
    "GFLOPS" column. Build the model under ``with torch.device("meta"):`` and nothing is
    computed or allocated.
    """
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(_example_input(model, input_size))
    return counter.get_total_flops()


def layer_table(model: nn.Module, input_size: int = 224) -> list[LayerRow]:
    """Every leaf module in the order a forward pass of one image calls it (torchinfo-like).

    A module called twice appears twice. Functional steps (``torch.flatten``) have no row.
    """
    rows: list[LayerRow] = []

    def record(name: str):
        def hook(module: nn.Module, inputs: Any, output: Tensor) -> None:
            own = sum(p.numel() for p in module.parameters(recurse=False))
            rows.append(LayerRow(name, type(module).__name__, tuple(output.shape[1:]), own))

        return hook

    handles = [
        module.register_forward_hook(record(name))
        for name, module in model.named_modules()
        if not list(module.children())
    ]
    try:
        with torch.no_grad():
            model(_example_input(model, input_size))
    finally:
        for handle in handles:
            handle.remove()
    return rows


class MarkdownText(str):
    """A string that Jupyter renders as Markdown (as a cell's value or through ``display``)."""

    def _repr_markdown_(self) -> str:
        return str(self)

    def __repr__(self) -> str:  # plain consoles show the table, not a quoted one-liner
        return str(self)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> MarkdownText:
    """A Markdown table; columns of numbers (blanks allowed) are right-aligned."""
    columns = [[row[i] for row in rows if row[i] != ""] for i in range(len(headers))]
    numeric = [bool(cells) and all(map(_is_number, cells)) for cells in columns]
    lines = [
        "| " + " | ".join(headers) + " |",
        "| " + " | ".join("---:" if right else "---" for right in numeric) + " |",
    ]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return MarkdownText("\n".join(lines))


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) or bool(_NUMBER.fullmatch(str(value)))


# -- data ------------------------------------------------------------------------------------


def data_section(config: str | Path) -> tuple[type[BaseImageDataModule], dict[str, Any]]:
    """The datamodule class and ``init_args`` of an experiment config's ``data:`` section."""
    data = yaml.safe_load(Path(config).read_text()).get("data")
    if not isinstance(data, dict) or "class_path" not in data:
        raise ValueError(f"{config} has no `data: {{class_path: ..., init_args: ...}}` section")
    module_name, _, class_name = data["class_path"].rpartition(".")
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls, dict(data.get("init_args") or {})


def datamodule_from_config(
    config: str | Path, data_root: str | Path | None = None, **overrides: Any
) -> BaseImageDataModule:
    """The datamodule of an experiment config's ``data:`` section, with ``overrides`` applied.

    The same class and arguments the CLI builds, so what you look at is what trains. A relative
    ``data_dir`` (``data/cifar10`` in the shipped configs) is taken relative to ``data_root``
    (default: the working directory, as for the CLI); ``data_dir=...`` overrides it.
    """
    cls, init_args = data_section(config)
    if data_root is not None:
        default = inspect.signature(cls).parameters["data_dir"].default
        init_args["data_dir"] = str(Path(data_root, init_args.get("data_dir", default)))
    return cls(**{**init_args, **overrides})


def split_labels(view: SplitView) -> np.ndarray:
    """The labels of a split, in order, read from its source's label list (no image decoding).

    Knows torchvision's CIFAR-10 (``targets``), STL-10 (``labels``) and image files
    (``samples``); any other source is indexed image by image.
    """
    source = view.source
    if hasattr(source, "targets"):
        labels = np.asarray(source.targets)
    elif hasattr(source, "labels") and source.labels is not None:
        labels = np.asarray(source.labels)
    elif hasattr(source, "samples"):
        labels = np.asarray([label for _, label in source.samples])
    else:
        return np.asarray([int(source[i][1]) for i in view.indices], dtype=np.int64)
    return labels[np.asarray(view.indices, dtype=np.int64)]


def class_counts(datamodule: BaseImageDataModule) -> dict[str, np.ndarray]:
    """Images per class in every built split of ``datamodule`` (call ``setup()`` first)."""
    num_classes = datamodule.num_classes
    return {
        name: np.bincount(split_labels(view), minlength=num_classes)
        for name, view in datamodule.splits.items()
    }


def class_balance_figure(
    counts: Mapping[str, Sequence[int]], class_names: Sequence[str], title: str = ""
) -> Figure:
    """Grouped bars: images per class, one bar colour per split."""
    figure = Figure(figsize=(max(6.0, 0.55 * len(class_names) + 2), 3.6), layout="constrained")
    axes = figure.subplots()
    x = np.arange(len(class_names))
    width = 0.8 / max(1, len(counts))
    for i, (split, values) in enumerate(counts.items()):
        axes.bar(x + (i - (len(counts) - 1) / 2) * width, values, width, label=split)
    axes.set_xticks(x, class_names, rotation=45, ha="right")
    axes.set(ylabel="images", title=title)
    figure.legend(loc="outside right upper")
    axes.grid(alpha=0.3, axis="y")
    return figure


def find_normalize(transform: Any) -> v2.Normalize:
    """The ``Normalize`` step of a (possibly nested) ``v2.Compose`` pipeline."""
    if isinstance(transform, v2.Normalize):
        return transform
    for step in getattr(transform, "transforms", []):
        try:
            return find_normalize(step)
        except ValueError:
            continue
    raise ValueError(f"no v2.Normalize step in {transform!r}")


def denormalize(images: Tensor, transform: Any) -> Tensor:
    """Undo the ``Normalize`` step of ``transform``: images back to [0, 1] for display.

    ``images`` is (3, H, W) or (N, 3, H, W). The statistics come from the pipeline itself, so
    each data set is de-normalised with the mean and std it was normalised with.
    """
    normalize = find_normalize(transform)
    shape = (3, 1, 1)
    mean = torch.tensor(normalize.mean, dtype=images.dtype).view(shape)
    std = torch.tensor(normalize.std, dtype=images.dtype).view(shape)
    return (images * std + mean).clamp(0.0, 1.0)


def image_grid(
    images: Sequence[Tensor | Image.Image],
    titles: Sequence[str] | None = None,
    title: str = "",
    columns: int = 8,
    cell_inches: float = 1.5,
) -> Figure:
    """Images in a grid: (3, H, W) float tensors in [0, 1] (see :func:`denormalize`) or PIL.

    ``titles`` label the images, ``title`` the figure.
    """
    rows = max(1, math.ceil(len(images) / columns))
    columns = min(columns, max(1, len(images)))
    figure = Figure(
        figsize=(columns * cell_inches, rows * (cell_inches + 0.2)), layout="compressed"
    )
    axes = np.atleast_1d(figure.subplots(rows, columns, squeeze=False)).ravel()
    for i, ax in enumerate(axes):
        ax.set_axis_off()
        if i >= len(images):
            continue
        image = images[i]
        if isinstance(image, Tensor):
            image = TF.to_pil_image(image.clamp(0.0, 1.0))
        ax.imshow(image)
        if titles is not None:
            ax.set_title(titles[i], fontsize=8)
    if title:
        figure.suptitle(title)
    return figure


def augmented_versions(view: SplitView, position: int, epochs: int) -> list[Tensor]:
    """Sample ``position`` of a training split as the loader gives it in epochs ``0..epochs-1``.

    The datamodules seed each sample's augmentation from ``(seed, epoch, sample)``, so these are
    exactly the crops and flips the DataLoader path trains on, not a fresh random draw (with
    ``device_resident`` the GPU path applies the same transforms with its own random draws).
    """
    return [view[(epoch, position)][0] for epoch in range(epochs)]


# -- ablation results ------------------------------------------------------------------------

MADE_UP_NAME = "MADE-UP-demo-not-real-results"


def write_made_up_ablation(
    out: str | Path,
    effects: Mapping[str, float] | None = None,
    seeds: Sequence[int] = (0, 1, 2),
    epochs: int = 15,
    final_accuracy: float = 0.88,
    seed_spread: float = 0.004,
    run_noise: float = 0.002,
    rng_seed: int = 0,
) -> AblationSpec:
    """Fabricate a finished ablation in the runner's on-disk format. NOT real results.

    Writes ``<out>/ablation.yaml`` and, per arm and seed, ``summary.json`` and ``history.csv``
    where the CLI would (``<out>/runs/<name>/<arm>-seed<N>/``), for demos and tests of the report
    code. Its name, :data:`MADE_UP_NAME`, ends up in every title and table. ``effects`` maps
    arm names to their true effect on accuracy (fractions; the first arm is the baseline). Each
    seed shifts all arms alike by ``N(0, seed_spread)`` (the paired design), each run adds
    ``N(0, run_noise)``; validation accuracy rises to the test level like ``1 - exp(-epoch/3)``.
    """
    from convrepro.ablate.spec import SPEC_FILE, AblationSpec
    from convrepro.runs.records import HISTORY_FILE, REPORT_FILE

    effects = dict(effects or {"A": 0.0, "A-LRN": -0.003})
    out = Path(out)
    spec = AblationSpec(
        name=MADE_UP_NAME,
        base=Path("made-up.yaml"),
        seeds=tuple(seeds),
        arms={arm: {"model.backbone.init_args.config": arm} for arm in effects},
        overrides={"trainer.max_epochs": epochs},
        baseline=next(iter(effects)),
    )
    rng = np.random.default_rng(rng_seed)
    seed_shift = {seed: rng.normal(0.0, seed_spread) for seed in seeds}
    for run in spec.runs():
        run_dir = spec.run_dir(out, run)
        run_dir.mkdir(parents=True, exist_ok=True)
        test_acc = final_accuracy + effects[run.arm] + seed_shift[run.seed]
        test_acc += rng.normal(0.0, run_noise)
        curve = [
            test_acc * (1 - 0.85 * math.exp(-epoch / 3)) + rng.normal(0.0, run_noise)
            for epoch in range(epochs)
        ]
        with (run_dir / HISTORY_FILE).open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["epoch", "step", "val/acc"])
            writer.writerows(
                [epoch, 100 * (epoch + 1), f"{acc:.4f}"] for epoch, acc in enumerate(curve)
            )
        summary = {
            "best_val_acc": max(curve),
            "best_checkpoint": "",
            "epochs": epochs,
            "fit_seconds": 60.0 * epochs,
            "test/acc": test_acc,
            "test/acc_top5": min(1.0, test_acc + 0.1),
        }
        (run_dir / REPORT_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    (out / SPEC_FILE).write_text(spec.to_yaml())
    return spec


def download_wandb_group(
    project: str,
    group: str,
    out: str | Path,
    baseline: str | None = None,
    api: Any = None,
) -> AblationSpec:
    """Copy the runs of a W&B group (an ablation run by the runner) into its on-disk format.

    The runner groups an ablation's W&B runs under its name and appends the tags ``<arm>``,
    ``seed-<N>`` to those the config gives; this reads the arm and seed from them, the run's
    ``test/acc``, ``test/acc_top5`` and ``val/acc_best`` summary values and its ``val/acc``
    history, and writes what :func:`write_made_up_ablation` writes, so the same report code
    reads it. Runs without a ``seed-<N>`` tag after an arm tag are skipped. ``project`` is
    ``"entity/project"``; ``baseline`` defaults to the first arm by name; ``api`` defaults to
    ``wandb.Api()`` (needs network access and a W&B login).
    """
    from convrepro.ablate.spec import SPEC_FILE, AblationSpec, Run, runs_root
    from convrepro.runs.records import HISTORY_FILE, REPORT_FILE

    if api is None:
        import wandb

        api = wandb.Api()
    out = Path(out)
    arms: dict[str, dict[str, Any]] = {}
    seeds: set[int] = set()
    for wandb_run in api.runs(project, filters={"group": group}):
        tags = list(wandb_run.tags)
        seed_at = next((i for i, tag in enumerate(tags) if re.fullmatch(r"seed-\d+", tag)), 0)
        if seed_at == 0:  # no seed tag, or no arm tag before it
            continue
        arm, seed = tags[seed_at - 1], int(tags[seed_at].removeprefix("seed-"))
        arms.setdefault(arm, {})
        seeds.add(seed)
        run_dir = runs_root(out) / group / Run(arm, seed, {}).id
        run_dir.mkdir(parents=True, exist_ok=True)
        history = {
            int(row["epoch"]): float(row["val/acc"])
            for row in wandb_run.scan_history(keys=["epoch", "val/acc"])
        }
        with (run_dir / HISTORY_FILE).open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["epoch", "val/acc"])
            writer.writerows(sorted(history.items()))
        summary = wandb_run.summary
        best_val = summary.get("val/acc_best", max(history.values(), default=math.nan))
        values = {"best_val_acc": best_val, "epochs": len(history), "best_checkpoint": ""}
        for key in ("test/acc", "test/acc_top5"):
            if summary.get(key) is not None:
                values[key] = summary.get(key)
        values["wandb_url"] = getattr(wandb_run, "url", "")
        (run_dir / REPORT_FILE).write_text(json.dumps(values, indent=2) + "\n")
    if not arms:
        raise ValueError(f"no runs with arm and seed-<N> tags in W&B group {group!r} of {project}")
    if baseline is not None and baseline not in arms:
        raise ValueError(f"baseline {baseline!r} is not an arm of {group!r}: {', '.join(arms)}")
    spec = AblationSpec(
        name=group,
        base=Path(f"wandb-{group}.yaml"),
        seeds=tuple(sorted(seeds)),
        arms=dict(sorted(arms.items())),
        overrides={},
        baseline=baseline or min(arms),
    )
    (out / SPEC_FILE).write_text(spec.to_yaml())
    return spec
