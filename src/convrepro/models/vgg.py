"""VGG (Simonyan & Zisserman, arXiv 1409.1556): the six configurations of Table 1."""

import math
from collections.abc import Mapping
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from convrepro.errors import ConfigError
from convrepro.models.layers import (
    ReLUWithLRN,
    check_choice,
    check_image_batch,
    check_num_classes,
    kaiming_init_,
)
from convrepro.models.weights import (
    describe_mismatch,
    load_state_dict_file,
    load_weights,
    network_state_dict,
)

VGGConfig = Literal["A", "A-LRN", "B", "C", "D", "E"]
VGGHead = Literal["imagenet", "cifar"]
VGGInit = Literal["paper", "kaiming", "xavier"]

# Table 1, one list per column. An int is a conv3 layer of that width, (width, 1) a conv1 layer,
# "LRN" normalises the preceding layer's rectified output, "M" is a 2x2 max-pool.
LayerSpec = int | tuple[int, int] | str
# fmt: off
CONFIGS: dict[str, list[LayerSpec]] = {
    "A": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "A-LRN": [64, "LRN", "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "B": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "C": [64, 64, "M", 128, 128, "M", 256, 256, (256, 1), "M",
          512, 512, (512, 1), "M", 512, 512, (512, 1), "M"],
    "D": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "E": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
          512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}
# fmt: on
TORCHVISION_ARCHS = {"A": "vgg11", "B": "vgg13", "D": "vgg16", "E": "vgg19"}
MIN_INPUT_SIZE = 32  # five 2x2 max-pools
#: Std of the ``paper`` init's Gaussian: 0.01, as Caffe-era reimplementations read sec. 3.1; the
#: paper prints "variance 10^-2", std 0.1, which diverges (README "VGG's initialisation").
PAPER_INIT_STD = 0.01
# Paper sec 3.1: net A's first four conv layers and the classifier warm-start deeper nets.
WARM_START_CONV_LAYERS = 4


def make_layers(config: list[LayerSpec], batch_norm: bool = False) -> nn.Sequential:
    """The conv trunk of one Table 1 column, laid out like torchvision's (same state-dict keys)."""
    layers: list[nn.Module] = []
    in_channels = 3
    for layer in config:
        if layer == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        elif layer == "LRN":
            # Into the ReLU's slot, so A-LRN keeps net A's state-dict keys.
            layers[-1] = ReLUWithLRN()
        else:
            width, kernel = layer if isinstance(layer, tuple) else (layer, 3)
            layers.append(nn.Conv2d(in_channels, width, kernel, padding=kernel // 2))
            if batch_norm:
                layers.append(nn.BatchNorm2d(width))
            layers.append(nn.ReLU(inplace=True))
            in_channels = width
    return nn.Sequential(*layers)


class VGG(nn.Module):
    """VGG net of paper Table 1, compatible with torchvision's ``vgg11/13/16/19[_bn]`` weights.

    Args:
        config: column of Table 1. A, B, D, E are torchvision's vgg11, vgg13, vgg16, vgg19; A-LRN
            adds LRN (Krizhevsky's parameters) after the first conv; C is B plus a 1x1 conv as
            third layer of stages 3-5.
        num_classes: outputs of the last layer.
        batch_norm: BatchNorm after every conv (not in the paper; torchvision's ``*_bn``).
        head: ``"imagenet"`` is the paper's classifier: adaptive 7x7 average pool, FC-4096,
            FC-4096, FC-num_classes, ReLU and dropout after the hidden layers. ``"cifar"`` is
            the usual small-image head (chenyaofo/pytorch-cifar-models, 94.16% CIFAR-10 with
            vgg16_bn): FC-512, FC-512, FC-num_classes on the 512 channels of the last feature map.
            At 32 px that map is 1x1, where the ImageNet head would copy one pixel into a 7x7
            grid and spend 103M parameters on it. Its pool is a global average, so larger inputs
            (STL-10 at 96 px) work too.
        dropout: drop probability after each hidden FC layer.
        init: ``"paper"`` draws conv and FC weights from N(0, ``init_std``^2), biases 0 (sec
            3.1; net A was trained like this, deeper nets are warm-started from it).
            ``"kaiming"`` is torchvision's init. ``"xavier"`` is Glorot uniform with zero
            biases, which the paper notes makes warm starts unnecessary.
        init_std: standard deviation of the ``paper`` init. The paper prints "zero mean and
            10^-2 variance", i.e. 0.1; taken literally, net A's logits start at a std near
            1e6 on the papers' 0-255 inputs and its optimiser reaches NaN within a few
            steps (``benchmarks/vgg_init.py``). The default 0.01 is how Caffe-era
            reimplementations read it, and trains; ``0.1`` keeps the literal reading.
        weights: pretrained weights, applied after init by
            :func:`~convrepro.models.weights.load_weights`: a torchvision weights name of the
            matching net (``"DEFAULT"``, ``"IMAGENET1K_V1"``; configs A, B, D, E with the
            imagenet head), downloaded to the torch hub cache, or a state-dict or
            Lightning-checkpoint path. A final layer of another num_classes keeps its fresh init
            (fine-tuning); any other mismatch is an error.
        warm_start: path of a trained net A (same ``batch_norm``, ``head``, ``num_classes``),
            applied with :meth:`warm_start_from`.

    The input must be at least 32x32 px. :meth:`dense` gives the paper's fully-convolutional
    evaluation form.
    """

    def __init__(
        self,
        config: VGGConfig = "D",
        *,
        num_classes: int = 1000,
        batch_norm: bool = False,
        head: VGGHead = "imagenet",
        dropout: float = 0.5,
        init: VGGInit = "kaiming",
        init_std: float = PAPER_INIT_STD,
        weights: str | None = None,
        warm_start: str | None = None,
    ) -> None:
        super().__init__()
        check_choice("config", config, get_args(VGGConfig))
        check_choice("head", head, get_args(VGGHead))
        check_choice("init", init, get_args(VGGInit))
        check_num_classes(num_classes)
        if init_std <= 0:
            raise ConfigError(f"init_std must be positive, got {init_std}")
        if weights is not None and warm_start is not None:
            raise ConfigError(
                "pass either weights (load a whole trained net) or warm_start (initialise a "
                "deeper net from net A), not both"
            )
        self.config = config
        self.batch_norm = batch_norm
        self.head = head
        self.num_classes = num_classes
        #: The side of the square crops it is built for (evaluation crops default to it): the
        #: paper's 224 for the ImageNet head; none for the CIFAR head, whose global pool takes
        #: any size from 32 px.
        self.input_size = 224 if head == "imagenet" else None
        self.arch_name = (
            f"VGG-{config}{' with batch norm' if batch_norm else ''} ({head} head, "
            f"{num_classes} classes)"
        )
        # The torchvision builder with this layout, whose weights names `weights=` accepts.
        self.torchvision_arch: str | None = None
        if config in TORCHVISION_ARCHS and head == "imagenet":
            self.torchvision_arch = TORCHVISION_ARCHS[config] + ("_bn" if batch_norm else "")

        self.features = make_layers(CONFIGS[config], batch_norm)
        pooled_size, hidden = (7, 4096) if head == "imagenet" else (1, 512)
        self.avgpool = nn.AdaptiveAvgPool2d(pooled_size)
        self.classifier = nn.Sequential(
            nn.Linear(512 * pooled_size**2, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )
        _initialise(self, init, init_std)

        if warm_start is not None:
            self.warm_start_from(load_state_dict_file(warm_start))
        if weights is not None:
            load_weights(
                self, weights, arch_name=self.arch_name, torchvision_arch=self.torchvision_arch
            )

    def forward(self, x: Tensor) -> Tensor:
        check_image_batch(
            x,
            min_size=MIN_INPUT_SIZE,
            model_name=self.arch_name,
            advice="VGG has five 2x2 max-pools; resize the images (the data module's resize).",
        )
        x = self.features(x)
        x = self.avgpool(x)
        return self.classifier(torch.flatten(x, 1))

    def dense(self) -> "DenseVGG":
        """The fully-convolutional form of this net (paper sec 3.2), sharing its parameters."""
        return DenseVGG(self)

    def warm_start_from(self, state_dict: Mapping[str, Tensor]) -> list[str]:
        """Initialise layers from a trained net A (paper sec 3.1); return the keys copied.

        The paper initialises "the first four convolutional layers and the last three
        fully-connected layers with the layers of net A". Read literally for B-E this cannot
        work: their stage 1 has two 64-channel convs, so A's second conv (64->128) does not fit
        their second conv (64->64). Each of A's first four convs therefore goes to the conv at
        the same place in the same stage: A's stage-1 conv to the first conv of stage 1, its
        stage-2 conv to the first conv of stage 2, its two stage-3 convs to the first two convs
        of stage 3. With ``batch_norm`` the BatchNorm after each copied conv comes along. All
        three FC layers are copied. Everything else keeps its current values.

        ``state_dict`` must be a whole net A with this net's ``batch_norm``, ``head`` and
        ``num_classes``, bare or inside a Lightning checkpoint's state dict
        (:func:`~convrepro.models.weights.network_state_dict`); anything else raises a
        ConfigError.
        """
        with torch.device("meta"):  # shapes and keys only, no memory or init cost
            net_a = VGG(
                "A", num_classes=self.num_classes, batch_norm=self.batch_norm, head=self.head
            )
        expected = net_a.state_dict()
        state_dict = network_state_dict(state_dict, expected)
        problems = describe_mismatch(expected, state_dict)
        if problems:
            raise ConfigError(
                f"warm_start needs the weights of a trained {net_a.arch_name}, matching this "
                f"net's batch_norm, head and num_classes. {problems} Pass the checkpoint of such "
                "a net A, or set warm_start: null."
            )

        target_units = dict(_conv_units(self.features))
        key_map = {f"classifier.{key}": f"classifier.{key}" for key in self.classifier.state_dict()}
        for position, source_modules in _conv_units(net_a.features)[:WARM_START_CONV_LAYERS]:
            for source, target in zip(source_modules, target_units[position], strict=True):
                for key in self.features.get_submodule(target).state_dict():
                    key_map[f"features.{target}.{key}"] = f"features.{source}.{key}"
        # Files saved before PyTorch 0.4.1 lack `num_batches_tracked`; those keep their value.
        copied = {new: state_dict[old] for new, old in key_map.items() if old in state_dict}
        self.load_state_dict(copied, strict=False)
        return sorted(copied)


class DenseVGG(nn.Module):
    """Fully-convolutional VGG for dense evaluation (paper sec 3.2), sharing a VGG's modules.

    The first FC layer is applied as a 7x7 conv (1x1 for the cifar head), the others as 1x1
    convs, using views of the very same weight tensors: training or loading the VGG changes this
    module too, and so does switching the shared modules between train and eval mode. Any input
    of at least 224 px (32 px for the cifar head) gives a class score map, which is averaged over
    space into (N, num_classes) scores. The average is taken over the raw (pre-softmax) class
    scores, the paper's spatial averaging of the class score map; averaging softmax posteriors
    over crops, flips or scales is left to the evaluation code. At 224 px (32 px for the cifar
    head) the result equals the VGG's own output.
    """

    def __init__(self, vgg: VGG) -> None:
        super().__init__()
        self.features = vgg.features
        self.classifier = vgg.classifier
        self.arch_name = f"{vgg.arch_name}, dense evaluation"
        self.first_kernel = vgg.avgpool.output_size

    def forward(self, x: Tensor) -> Tensor:
        check_image_batch(
            x,
            min_size=MIN_INPUT_SIZE * self.first_kernel,
            model_name=self.arch_name,
            advice=(
                f"its first FC layer is a {self.first_kernel}x{self.first_kernel} conv over the "
                "last feature map; evaluate smaller images with the VGG itself."
            ),
        )
        x = self.features(x)
        for layer in self.classifier:
            if isinstance(layer, nn.Linear):
                kernel = math.isqrt(layer.in_features // x.shape[1])
                weight = layer.weight.view(layer.out_features, x.shape[1], kernel, kernel)
                x = F.conv2d(x, weight, layer.bias)
            else:
                x = layer(x)
        return x.mean(dim=(2, 3))


def _conv_units(features: nn.Sequential) -> list[tuple[tuple[int, int], list[str]]]:
    """((stage, index within stage), [conv name, BN name if any]) for each conv, in order."""
    units: list[tuple[tuple[int, int], list[str]]] = []
    stage, index = 0, 0
    for name, module in features.named_children():
        if isinstance(module, nn.MaxPool2d):
            stage, index = stage + 1, 0
        elif isinstance(module, nn.Conv2d):
            units.append(((stage, index), [name]))
            index += 1
        elif isinstance(module, nn.BatchNorm2d):
            units[-1][1].append(name)
    return units


def _initialise(model: nn.Module, scheme: VGGInit, paper_std: float) -> None:
    if scheme == "kaiming":
        kaiming_init_(model)
        return
    # Fresh BatchNorm layers already have weight 1 and bias 0.
    for module in model.modules():
        if isinstance(module, nn.Conv2d | nn.Linear):
            if scheme == "paper":
                nn.init.normal_(module.weight, 0.0, paper_std)
            else:
                nn.init.xavier_uniform_(module.weight)
            nn.init.zeros_(module.bias)
