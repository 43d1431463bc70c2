"""convrepro: VGG and AlexNet paper reproductions and LRN ablations with PyTorch Lightning."""

__version__ = "0.1.0"
