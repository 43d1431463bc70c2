"""Model statistics, measured on the ``meta`` device: parameter counts, FLOPs, a layer table.

Build the model under ``with torch.device("meta"):`` and even VGG-E at 224 px costs no memory
and well under a second: shapes propagate, nothing is computed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from convrepro.models.layers import PaperLRN


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


@torch.no_grad()
def lrn_regime(model: nn.Module, images: Tensor) -> dict[str, float]:
    """For every :class:`~convrepro.models.PaperLRN` in ``model``, the mean over the batch of
    ``alpha * sum(a^2) / k`` at its input while ``model`` classifies ``images`` (as the
    network takes them, normalised): whether LRN acts there or is nearly a constant factor
    (:meth:`~convrepro.models.PaperLRN.relative_response`)."""
    found: dict[str, float] = {}
    hooks = [
        module.register_forward_pre_hook(
            lambda module, args, name=name: found.__setitem__(
                name, module.relative_response(args[0]).mean().item()
            )
        )
        for name, module in model.named_modules()
        if isinstance(module, PaperLRN)
    ]
    training = model.training
    try:
        model.eval()
        model(images)
    finally:
        model.train(training)
        for hook in hooks:
            hook.remove()
    return found
