"""The VGG and AlexNet families, and loading weights into them."""

from convrepro.models.alexnet import AlexNet
from convrepro.models.conv_local import ConvLocalNet, LocallyConnected2d
from convrepro.models.layers import PaperLRN
from convrepro.models.vgg import VGG, DenseVGG
from convrepro.models.weights import (
    load_backbone_weights,
    load_state_dict_file,
    load_weights,
    network_state_dict,
)

__all__ = [
    "VGG",
    "AlexNet",
    "ConvLocalNet",
    "DenseVGG",
    "LocallyConnected2d",
    "PaperLRN",
    "load_backbone_weights",
    "load_state_dict_file",
    "load_weights",
    "network_state_dict",
]
