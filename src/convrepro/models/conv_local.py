"""The AlexNet paper's CIFAR-10 LRN experiment: cuda-convnet's "conv-local" network.

Krizhevsky et al. (2012, sec. 3.3): "a four-layer CNN achieved a 13% test error rate without
normalization and 11% with normalization". That network is the one of cuda-convnet's example
files ``layers-conv-local-13pct.cfg`` and ``layers-conv-local-11pct.cfg`` (public repository
``dnouri/cuda-convnet``, ``example-layers/``), with their ``layer-params-*.cfg``. The tables below
transcribe them section by section, so they can be held against the files line by line.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from convrepro.errors import ConfigError
from convrepro.models.layers import PaperLRN, check_num_classes
from convrepro.models.weights import load_weights


class LocallyConnected2d(nn.Module):
    """A convolution whose filters are not shared: every output position has its own weights
    and bias (cuda-convnet's ``type=local``).

    Built for one input size, since the weights are per position: ``unfold`` cuts every
    receptive field at once and one batched matmul applies each position's own
    ``(in_channels * k * k) x out_channels`` matrix (no Python loop over positions).

    Args:
        in_channels, out_channels: Maps in and out.
        input_size: Side of the square input it is built for.
        kernel_size, padding, stride: As in ``nn.Conv2d``.
        init_std: Standard deviation of the Gaussian weight init (cuda-convnet's ``initW``);
            biases start at 0.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        input_size: int,
        kernel_size: int,
        padding: int = 0,
        stride: int = 1,
        init_std: float = 0.01,
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.input_size, self.kernel_size = input_size, kernel_size
        self.padding, self.stride = padding, stride
        self.output_size = (input_size + 2 * padding - kernel_size) // stride + 1
        if self.output_size < 1:
            raise ConfigError(
                f"LocallyConnected2d: a {kernel_size}x{kernel_size} kernel does not fit a "
                f"{input_size}x{input_size} input with padding {padding}"
            )
        positions = self.output_size**2
        fan_in = in_channels * kernel_size**2
        self.weight = nn.Parameter(torch.empty(positions, fan_in, out_channels))
        self.bias = nn.Parameter(torch.zeros(out_channels, self.output_size, self.output_size))
        nn.init.normal_(self.weight, 0.0, init_std)

    def forward(self, x: Tensor) -> Tensor:
        expected = (self.in_channels, self.input_size, self.input_size)
        if tuple(x.shape[1:]) != expected or x.ndim != 4:
            raise ConfigError(
                f"LocallyConnected2d was built for inputs of {expected[0]} x {expected[1]} x "
                f"{expected[2]} (channels x height x width), got {tuple(x.shape[1:])}: its "
                "weights are per position, so the input size is fixed"
            )
        patches = F.unfold(x, self.kernel_size, padding=self.padding, stride=self.stride)
        # (N, fan_in, P) -> (P, N, fan_in) @ (P, fan_in, F) -> (P, N, F) -> (N, F, H, W)
        out = torch.bmm(patches.permute(2, 0, 1), self.weight.to(patches.dtype))
        out = out.permute(1, 2, 0).reshape(x.shape[0], self.out_channels, *self.bias.shape[1:])
        return out + self.bias.to(out.dtype)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, input_size={self.input_size}, "
            f"kernel_size={self.kernel_size}, padding={self.padding}, stride={self.stride}"
        )


@dataclass(frozen=True)
class LayerParams:
    """One section of a ``layer-params-*.cfg``: cuda-convnet's per-layer learning rates
    (``epsW``, ``epsB``), momenta (``momW``, ``momB``) and weight decay (``wc``, weights only)."""

    epsW: float
    epsB: float
    momW: float
    momB: float
    wc: float


# layer-params-conv-local-11pct.cfg / -13pct.cfg. They differ only in fc10's wc.
_CONV = LayerParams(epsW=0.001, epsB=0.002, momW=0.9, momB=0.9, wc=0.0)
_LOCAL = LayerParams(epsW=0.001, epsB=0.002, momW=0.9, momB=0.9, wc=0.004)
LAYER_PARAMS = {
    "11pct": {
        "conv1": _CONV,
        "conv2": _CONV,
        "local3": _LOCAL,
        "local4": _LOCAL,
        "fc10": LayerParams(epsW=0.001, epsB=0.002, momW=0.9, momB=0.9, wc=0.01),
    },
    "13pct": {
        "conv1": _CONV,
        "conv2": _CONV,
        "local3": _LOCAL,
        "local4": _LOCAL,
        "fc10": LayerParams(epsW=0.001, epsB=0.002, momW=0.9, momB=0.9, wc=0.004),
    },
}
#: The ``epsW`` of every layer in both files: the optimiser's ``lr`` in the configs. Each
#: parameter group's ``lr_scale`` is its own eps relative to it (biases: 2x).
BASE_EPS = 0.001

# layers-conv-local-{11,13}pct.cfg: the rnorm layers (11pct only) and local3's filters differ.
LRN_SIZE, LRN_SCALE, LRN_POW = 9, 0.001, 0.75  # [rnorm1], [rnorm2]: size=9, scale, pow
INIT_STD = {"conv1": 1e-4, "conv2": 0.01, "local3": 0.04, "local4": 0.04, "fc10": 0.01}
INPUT_SIZE = 24  # CroppedCIFARDataProvider: 32 - 2 * crop_border (4)


@dataclass(frozen=True)
class Definition:
    """What one layer file pair sets of the three things in which the two files differ."""

    lrn: bool
    local3_filters: int
    fc10_wc: float


#: The two files as presets: every setting of ``ConvLocalNet`` left at ``None`` takes these.
DEFINITIONS = {
    "11pct": Definition(lrn=True, local3_filters=64, fc10_wc=LAYER_PARAMS["11pct"]["fc10"].wc),
    "13pct": Definition(lrn=False, local3_filters=32, fc10_wc=LAYER_PARAMS["13pct"]["fc10"].wc),
}


class ConvLocalNet(nn.Module):
    """cuda-convnet's CIFAR-10 conv-local network (``layers-conv-local-11pct.cfg`` with LRN,
    ``layers-conv-local-13pct.cfg`` without), on 24x24 crops.

    ``conv1`` 5x5x64 pad 2, ReLU -> ``pool1`` max 3/2 -> [``rnorm1``] -> ``conv2`` 5x5x64 pad 2,
    ReLU -> [``rnorm2``] -> ``pool2`` max 3/2 -> ``local3`` 3x3 pad 1, ReLU -> ``local4`` 3x3x32
    pad 1, ReLU -> ``fc10``; 24 -> 12 -> 6 px. Every detail is the files':

    * Pool sizes as cuda-convnet computes them (``layer.py``, ``PoolLayerParser``:
      ``ceil((imgSize - start - sizeX) / stride) + 1``): 24 -> 12 and 12 -> 6, where
      ``nn.MaxPool2d`` would give 11 and 5; ``ceil_mode=True`` is that formula, and the last
      window covers the pixels that exist, as cuda-convnet's pooling kernel does.
    * ``rnorm1``/``rnorm2``: ``cmrnorm``, size 9, scale 0.001, pow 0.75, i.e.
      ``x / (1 + 0.001 / 9 * sum of 9 squares) ** 0.75`` (:meth:`PaperLRN.cuda_convnet`).
      Note the order the 11pct file uses: after ``pool1``, but before ``pool2``.
    * Init (``initW``): Gaussian weights, std 1e-4 (conv1), 0.01 (conv2, fc10), 0.04 (local3,
      local4); biases 0 (``initB`` defaults to 0). Conv biases are shared per map
      (``sharedBiases=1``), locally connected ones per position.
    * The two files differ in three things: the two rnorm layers (11pct only), ``local3``'s
      width (64 filters in 11pct, 32 in 13pct) and ``fc10``'s ``wc`` (0.01 and 0.004). The
      paper's 13% -> 11% compares the whole files; each difference is its own setting here, so
      that any combination is one config line (a factorial decomposition of the files).

    Args:
        definition: The layer files to start from, ``"11pct"`` or ``"13pct"``: every setting
            below left at ``None`` takes that file's value.
        lrn: The two rnorm layers on or off.
        local3_filters: ``local3``'s filters.
        fc10_wc: ``fc10``'s weight decay (``wc``); every other layer keeps the files' own.
        num_classes: Outputs of ``fc10``.
        weights: A state dict or Lightning checkpoint of this network to start from
            (:func:`~convrepro.models.weights.load_weights`), e.g. the paper protocol's
            second phase starting from the first phase's ``last.ckpt``.

    :meth:`parameter_groups` gives each layer's optimiser settings from the matching
    ``layer-params`` file (``ImageClassifier`` applies them).
    Inputs are 24x24 crops of 0-255 pixels minus the mean image
    (``convrepro.data.CIFAR10DataModule(preprocessing="cuda-convnet")``).
    """

    def __init__(
        self,
        definition: Literal["11pct", "13pct"] = "11pct",
        lrn: bool | None = None,
        local3_filters: int | None = None,
        fc10_wc: float | None = None,
        num_classes: int = 10,
        weights: str | None = None,
    ) -> None:
        super().__init__()
        check_num_classes(num_classes)
        if definition not in DEFINITIONS:
            raise ConfigError(
                f"ConvLocalNet: definition {definition!r} is not one of cuda-convnet's files; "
                f"use {' or '.join(map(repr, DEFINITIONS))}"
            )
        preset = DEFINITIONS[definition]
        self.definition = definition
        self.settings = Definition(
            lrn=preset.lrn if lrn is None else lrn,
            local3_filters=preset.local3_filters if local3_filters is None else local3_filters,
            fc10_wc=preset.fc10_wc if fc10_wc is None else fc10_wc,
        )
        if self.settings.local3_filters < 1 or self.settings.fc10_wc < 0:
            raise ConfigError(
                f"ConvLocalNet: local3_filters must be >= 1 and fc10_wc >= 0, got "
                f"{self.settings.local3_filters} and {self.settings.fc10_wc}"
            )
        #: The side of the square crops it takes (evaluation crops default to it).
        self.input_size = INPUT_SIZE
        self.arch_name = f"cuda-convnet conv-local ({self.describe()}, {num_classes} classes)"
        lrn, width = self.settings.lrn, self.settings.local3_filters

        layers: list[tuple[str, nn.Module]] = [
            ("conv1", nn.Conv2d(3, 64, kernel_size=5, padding=2)),
            ("relu1", nn.ReLU(inplace=True)),
            ("pool1", nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True)),
            ("rnorm1", _rnorm(lrn)),
            ("conv2", nn.Conv2d(64, 64, kernel_size=5, padding=2)),
            ("relu2", nn.ReLU(inplace=True)),
            ("rnorm2", _rnorm(lrn)),
            ("pool2", nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True)),
            ("local3", LocallyConnected2d(64, width, 6, kernel_size=3, padding=1)),
            ("relu3", nn.ReLU(inplace=True)),
            ("local4", LocallyConnected2d(width, 32, 6, kernel_size=3, padding=1)),
            ("relu4", nn.ReLU(inplace=True)),
        ]
        self.features = nn.Sequential(OrderedDict(layers))
        self.classifier = nn.Sequential(OrderedDict(fc10=nn.Linear(32 * 6 * 6, num_classes)))
        self._initialise()
        if weights is not None:
            load_weights(self, weights, arch_name=self.arch_name)

    def _initialise(self) -> None:
        for name, layer in self._weight_layers().items():
            nn.init.normal_(layer.weight, 0.0, INIT_STD[name])
            nn.init.zeros_(layer.bias)

    def _weight_layers(self) -> dict[str, nn.Module]:
        layers = {name: self.features.get_submodule(name) for name in INIT_STD if name != "fc10"}
        return {**layers, "fc10": self.classifier.fc10}

    def parameter_groups(self) -> list[dict[str, Any]]:
        """One optimiser group per layer's weights and per layer's biases, with the
        ``layer-params`` file's eps (as ``lr_scale`` relative to :data:`BASE_EPS`), momentum and
        weight decay (``wc`` on weights; cuda-convnet never decays biases)."""
        groups = []
        for name, layer in self._weight_layers().items():
            params = LAYER_PARAMS[self.definition][name]
            if name == "fc10":
                params = replace(params, wc=self.settings.fc10_wc)
            groups.append(
                {
                    "name": f"{name}.weight",
                    "params": [layer.weight],
                    "lr_scale": params.epsW / BASE_EPS,
                    "momentum": params.momW,
                    "weight_decay": params.wc,
                }
            )
            groups.append(
                {
                    "name": f"{name}.bias",
                    "params": [layer.bias],
                    "lr_scale": params.epsB / BASE_EPS,
                    "momentum": params.momB,
                    "weight_decay": 0.0,
                }
            )
        return groups

    def describe(self) -> str:
        """The file it is, or the file and what differs from it: ``13pct + LRN``."""
        preset = DEFINITIONS[self.definition]
        changes = []
        if self.settings.lrn != preset.lrn:
            changes.append("+ LRN" if self.settings.lrn else "- LRN")
        if self.settings.local3_filters != preset.local3_filters:
            changes.append(f"local3 {self.settings.local3_filters} filters")
        if self.settings.fc10_wc != preset.fc10_wc:
            changes.append(f"fc10 wc {self.settings.fc10_wc:g}")
        return " ".join([f"{self.definition} file", *changes])

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or tuple(x.shape[1:]) != (3, INPUT_SIZE, INPUT_SIZE):
            raise ConfigError(
                f"{self.arch_name} takes 24x24 RGB crops shaped (N, 3, 24, 24), got "
                f"{tuple(x.shape)}: use the CIFAR-10 datamodule with preprocessing: cuda-convnet"
            )
        return self.classifier(torch.flatten(self.features(x), 1))


def _rnorm(enabled: bool) -> nn.Module:
    """cuda-convnet's [rnorm] layer, or nothing (an identity keeps the state-dict keys)."""
    return PaperLRN.cuda_convnet(LRN_SIZE, LRN_SCALE, LRN_POW) if enabled else nn.Identity()
