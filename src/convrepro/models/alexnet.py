"""AlexNet (Krizhevsky, Sutskever & Hinton, NeurIPS 2012) and torchvision's variant of it."""

from typing import Literal, get_args

import torch
from torch import Tensor, nn

from convrepro.models.layers import (
    ReLUWithLRN,
    check_choice,
    check_image_batch,
    check_num_classes,
    kaiming_init_,
)
from convrepro.models.weights import load_weights

AlexNetVariant = Literal["paper", "torchvision"]
AlexNetInit = Literal["paper", "kaiming"]

CONV_WIDTHS = {"paper": (96, 256, 384, 384, 256), "torchvision": (64, 192, 384, 256, 256)}
CONV1_PADDING = {"paper": 0, "torchvision": 2}
# Smallest input whose feature map survives the third 3x3 stride-2 max-pool:
# paper (H - 11) // 4 + 1 >= 15 gives 67; torchvision pads conv1 by 2, giving 63.
MIN_INPUT_SIZE = {"paper": 67, "torchvision": 63}
#: The crop each variant is built for: conv1 unpadded (227 -> 55) or padded by 2 (224 -> 55).
INPUT_SIZE = {"paper": 227, "torchvision": 224}


class AlexNet(nn.Module):
    """AlexNet as in the paper, or torchvision's single-GPU variant of it.

    Args:
        variant: ``"paper"``: conv widths 96-256-384-384-256, conv1 11x11 stride 4 without
            padding (227x227 in, 55x55 out), dropout after each hidden FC layer. ``"torchvision"``:
            64-192-384-256-256 with conv1 padded by 2 and dropout before the hidden FC layers,
            the layout of ``torchvision.models.alexnet`` whose weights it loads. Both use
            overlapping 3x3 stride-2 max-pools after conv1, conv2 and conv5.
        num_classes: outputs of the last layer.
        lrn: response normalisation (:class:`~convrepro.models.layers.PaperLRN`, k=2, n=5,
            alpha=1e-4, beta=0.75) after the ReLUs of conv1 and conv2. Default: on for the paper,
            off for torchvision. It sits in the ReLU's slot, so both settings have identical
            state-dict keys and ablation arms can exchange weights.
        groups: 2 reproduces the paper's two-GPU split: conv2, conv4 and conv5 (and LRN) see
            only the maps of their own GPU, while conv3 and the FC layers connect across.
            60,965,224 parameters at 1000 classes instead of 62,378,344.
        dropout: drop probability of the two dropout layers.
        init: ``"paper"``: weights from N(0, 0.01), biases 1 in conv2, conv4, conv5 and the
            hidden FC layers, 0 elsewhere. ``"kaiming"``: the same He init as VGG's (torchvision's
            AlexNet itself keeps PyTorch's default layer init). Default: ``"paper"`` for the
            paper variant, ``"kaiming"`` for torchvision.
        weights: pretrained weights, applied after init by
            :func:`~convrepro.models.weights.load_weights`: a torchvision weights name
            (``"DEFAULT"``, ``"IMAGENET1K_V1"``; torchvision variant only) or a state-dict or
            Lightning-checkpoint path. A final layer of another num_classes keeps its fresh
            init (fine-tuning); any other mismatch is an error.

    Small images: the net is built for 227x227 crops and needs at least 67 px (63 px for the
    torchvision variant) to survive its three pools. Rather than shrink the architecture for
    32x32 CIFAR images, the CIFAR configs resize them to 227 in the data pipeline
    (``resize: 227``), so the LRN ablation runs on the paper's actual network; too small an
    input raises an error saying so.
    """

    def __init__(
        self,
        variant: AlexNetVariant = "paper",
        *,
        num_classes: int = 1000,
        lrn: bool | None = None,
        groups: int = 1,
        dropout: float = 0.5,
        init: AlexNetInit | None = None,
        weights: str | None = None,
    ) -> None:
        super().__init__()
        check_choice("variant", variant, get_args(AlexNetVariant))
        check_choice("init", init, (*get_args(AlexNetInit), None))
        check_choice("groups", groups, (1, 2))
        check_num_classes(num_classes)
        lrn = variant == "paper" if lrn is None else lrn
        init = init or ("paper" if variant == "paper" else "kaiming")
        self.min_input_size = MIN_INPUT_SIZE[variant]
        #: The side of the square crops it is built for (evaluation crops default to it).
        self.input_size = INPUT_SIZE[variant]
        self.arch_name = (
            f"AlexNet ({variant} variant, {'with' if lrn else 'no'} LRN, groups={groups}, "
            f"{num_classes} classes)"
        )

        # The torchvision builder with this layout, whose weights names `weights=` accepts.
        self.torchvision_arch = "alexnet" if variant == "torchvision" else None

        def rectify(normalise: bool) -> nn.Module:
            return ReLUWithLRN(groups) if normalise else nn.ReLU(inplace=True)

        c1, c2, c3, c4, c5 = CONV_WIDTHS[variant]
        self.features = nn.Sequential(
            nn.Conv2d(3, c1, kernel_size=11, stride=4, padding=CONV1_PADDING[variant]),
            rectify(lrn),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(c1, c2, kernel_size=5, padding=2, groups=groups),
            rectify(lrn),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(c2, c3, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(c3, c4, kernel_size=3, padding=1, groups=groups),
            nn.ReLU(inplace=True),
            nn.Conv2d(c4, c5, kernel_size=3, padding=1, groups=groups),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d(6)
        fc6, fc7 = nn.Linear(c5 * 6 * 6, 4096), nn.Linear(4096, 4096)
        # The paper drops the outputs of the hidden FC layers, torchvision their inputs.
        if variant == "paper":
            hidden = [fc6, nn.ReLU(inplace=True), nn.Dropout(dropout)]
            hidden += [fc7, nn.ReLU(inplace=True), nn.Dropout(dropout)]
        else:
            hidden = [nn.Dropout(dropout), fc6, nn.ReLU(inplace=True)]
            hidden += [nn.Dropout(dropout), fc7, nn.ReLU(inplace=True)]
        self.classifier = nn.Sequential(*hidden, nn.Linear(4096, num_classes))
        _initialise(self, init)

        if weights is not None:
            load_weights(
                self, weights, arch_name=self.arch_name, torchvision_arch=self.torchvision_arch
            )

    def forward(self, x: Tensor) -> Tensor:
        check_image_batch(
            x,
            min_size=self.min_input_size,
            model_name=self.arch_name,
            advice="AlexNet is built for 227x227 crops: for CIFAR-sized images set "
            "`resize: 227` in the data module config.",
        )
        x = self.features(x)
        x = self.avgpool(x)
        return self.classifier(torch.flatten(x, 1))


def _initialise(model: AlexNet, scheme: AlexNetInit) -> None:
    if scheme == "kaiming":
        kaiming_init_(model)
        return
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    linears = [m for m in model.classifier if isinstance(m, nn.Linear)]
    for layer in (*convs, *linears):
        nn.init.normal_(layer.weight, 0.0, 0.01)
        nn.init.zeros_(layer.bias)
    # Paper sec 5: positive biases give the ReLUs positive inputs early in training.
    for layer in (convs[1], convs[3], convs[4], *linears[:-1]):
        nn.init.ones_(layer.bias)
