"""Test-time evaluation protocols of the VGG (sec. 3.2, 4.1-4.3) and AlexNet (sec. 4.1) papers.

A protocol turns a batch of test images into class scores by running the backbone on several
views of each image (flips, crops, scales) and averaging the soft-max class posteriors, as both
papers do. Set one as ``model.test_protocol``; ``ImageClassifier`` then uses it in ``test`` and
``predict`` (validation stays a plain forward pass of the datamodule's center crops)::

    model:
      test_protocol:
        class_path: convrepro.training.DenseEvaluation
        init_args: {scales: [256, 384, 512], flip: true}

The protocols rescale on the device, so the datamodule must hand over test images at least as
large as the largest test scale Q (``ImageFolderDataModule(test_scale=Q)``); a protocol refuses
to upsample a smaller image, which would silently evaluate another protocol.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from convrepro.errors import ConfigError


class EvaluationProtocol(ABC):
    """How the test step turns a batch of images (N, 3, H, W) into class scores."""

    def __call__(self, backbone: nn.Module, images: Tensor) -> Tensor:
        """Log of the averaged posteriors, (N, num_classes).

        They work as logits: the cross-entropy of them is the negative log-likelihood of the
        averaged posterior, and their arg-max and top-k are its own.
        """
        return _log(self.posteriors(backbone, images))

    @abstractmethod
    def posteriors(self, backbone: nn.Module, images: Tensor) -> Tensor:
        """Soft-max class posteriors averaged over this protocol's views, (N, num_classes)."""

    def check(self, backbone: nn.Module) -> None:
        """Raise a ValueError now, rather than at test time, if ``backbone`` cannot be used."""
        return None  # by default any image classifier will do

    def evaluate(self, backbone: nn.Module, images: Tensor) -> tuple[Tensor, Tensor | None]:
        """This protocol's class scores (:meth:`__call__`) and, for protocols with a single
        centre view, that view's own scores (``test`` logs their accuracy as
        ``test/acc_center``), else ``None``."""
        return self(backbone, images), None

    def __repr__(self) -> str:
        arguments = ", ".join(f"{name}={value!r}" for name, value in vars(self).items())
        return f"{type(self).__name__}({arguments})"


class DenseEvaluation(EvaluationProtocol):
    """The VGG paper's dense evaluation (sec. 3.2): the fully-convolutional net on whole images.

    Each image is rescaled to shorter side Q, the net's fully-convolutional form
    (``backbone.dense()``, e.g. :meth:`convrepro.models.VGG.dense`) gives a class score map that
    is averaged over space, and the posteriors of the image and its horizontal flip are
    averaged. Multi-scale evaluation (sec. 4.2) also averages the posteriors over several Q.

    Args:
        scales: The test scales Q. The paper's single-scale evaluation (Table 3) uses Q = S for a
            fixed training scale S and Q = (Smin + Smax) / 2 for scale jittering; its
            multi-scale evaluation (Table 4) Q = {S - 32, S, S + 32}, or {Smin, (Smin + Smax)
            / 2, Smax} for jittering (e.g. [256, 384, 512]). ``None`` takes the images as given.
        flip: Also evaluate the horizontal flips (the paper does).
    """

    def __init__(self, scales: Sequence[int] | None = None, flip: bool = True) -> None:
        self.scales = _check_scales(scales)
        self.flip = flip

    def check(self, backbone: nn.Module) -> None:
        if not callable(getattr(backbone, "dense", None)):
            raise ConfigError(
                f"DenseEvaluation needs a backbone with a fully-convolutional form, .dense() "
                f"(convrepro.models.VGG has one); {type(backbone).__name__} has none. Use "
                "MultiCropEvaluation or TenCropEvaluation instead."
            )

    def posteriors(self, backbone: nn.Module, images: Tensor) -> Tensor:
        self.check(backbone)
        dense = backbone.dense()
        return _mean(
            _softmax(dense(view))
            for scaled in _rescaled(images, self.scales)
            for view in _flips(scaled, self.flip)
        )


class _CropEvaluation(EvaluationProtocol):
    """Posteriors averaged over square crops at given positions, their flips, and scales."""

    def __init__(self, crop_size: int | None, flip: bool, scales: Sequence[int] | None) -> None:
        if crop_size is not None and crop_size < 1:
            raise ConfigError(f"model.test_protocol: crop_size must be positive, got {crop_size}")
        self.crop_size = crop_size
        self.flip = flip
        self.scales = _check_scales(scales)

    def check(self, backbone: nn.Module) -> None:
        """Crop at the backbone's input size (``input_size``): by default, and a different
        ``crop_size`` is refused, since an adaptive pool would silently stretch or shrink the
        feature map it was trained on."""
        built_for = getattr(backbone, "input_size", None)
        name = getattr(backbone, "arch_name", type(backbone).__name__)
        if self.crop_size is None:
            if built_for is None:
                raise ConfigError(
                    f"{type(self).__name__}: {name} has no fixed input size; give "
                    "model.test_protocol.init_args.crop_size (the size it was trained on)"
                )
            self.crop_size = built_for
        elif built_for is not None and self.crop_size != built_for:
            raise ConfigError(
                f"{type(self).__name__}: crop_size={self.crop_size}, but {name} takes "
                f"{built_for}x{built_for} inputs: set crop_size to {built_for} or leave it out "
                "(it defaults to the network's input size)"
            )

    @abstractmethod
    def crop_offsets(self, height: int, width: int) -> list[tuple[int, int]]:
        """(top, left) of each crop of an image of ``height`` x ``width``."""

    def posteriors(self, backbone: nn.Module, images: Tensor) -> Tensor:
        # One forward pass per view of the whole batch: memory stays that of a plain test step.
        return _mean(
            _softmax(backbone(view))
            for scaled in _rescaled(images, self.scales)
            for crop in self._crops(scaled)
            for view in _flips(crop, self.flip)
        )

    def _crops(self, images: Tensor) -> Iterator[Tensor]:
        if self.crop_size is None:
            raise RuntimeError("check(backbone) sets the crop size before the first test batch")
        height, width = images.shape[-2:]
        if min(height, width) < self.crop_size:
            raise ConfigError(
                f"{type(self).__name__} cannot cut {self.crop_size} px crops from "
                f"{height}x{width} images: give larger test images (data.test_scale) or a "
                "larger test scale"
            )
        size = self.crop_size
        for top, left in self.crop_offsets(height, width):
            yield images[..., top : top + size, left : left + size]


class MultiCropEvaluation(_CropEvaluation):
    """The VGG paper's multi-crop evaluation (sec. 3.2, Table 5): a regular grid of crops.

    The paper uses "50 crops per scale (5 x 5 regular grid with 2 flips), for a total of 150
    crops over 3 scales" Q = {256, 384, 512}, with 224 px crops, and notes that combining it
    with dense evaluation (:class:`CombinedEvaluation`) is better than either alone.

    Args:
        crop_size: Side of the square crops; ``None``: the network's input size
            (``backbone.input_size``; 224 for VGG's ImageNet head), the only size it accepts.
        grid: Crops per row and per column, evenly spaced from one border to the other;
            1 is the center crop.
        flip: Also evaluate the horizontal flip of every crop.
        scales: Test scales Q (shorter image side); ``None`` takes the images as given.
    """

    def __init__(
        self,
        crop_size: int | None = None,
        grid: int = 5,
        flip: bool = True,
        scales: Sequence[int] | None = None,
    ) -> None:
        super().__init__(crop_size, flip, scales)
        if grid < 1:
            raise ConfigError(f"model.test_protocol: grid must be at least 1, got {grid}")
        self.grid = grid

    def crop_offsets(self, height: int, width: int) -> list[tuple[int, int]]:
        rows = _spread(height - self.crop_size, self.grid)
        columns = _spread(width - self.crop_size, self.grid)
        return [(top, left) for top in rows for left in columns]


class TenCropEvaluation(_CropEvaluation):
    """AlexNet's test protocol (sec. 4.1): the four corner crops, the center crop, their flips.

    "At test time, the network makes a prediction by extracting five 224 x 224 patches (the four
    corner patches and the center patch) as well as their horizontal reflections (hence ten
    patches in all), and averaging the predictions made by the network's softmax layer on the
    ten patches" - of the 256 x 256 images (``ImageFolderDataModule(test_scale=256)``). The crops
    are those of torchvision's ``TenCrop``.

    Args:
        crop_size: Side of the square crops; ``None``: the network's input size
            (``backbone.input_size``): 227 for the paper variant of
            :class:`convrepro.models.AlexNet`, whose conv1 has no padding (the paper's text says
            224), 224 for torchvision's. Another size than the network's is an error.
    """

    def __init__(self, crop_size: int | None = None) -> None:
        super().__init__(crop_size, flip=True, scales=None)

    def crop_offsets(self, height: int, width: int) -> list[tuple[int, int]]:
        bottom, right = height - self.crop_size, width - self.crop_size
        center = (round(bottom / 2), round(right / 2))  # where torchvision's CenterCrop cuts
        return [(0, 0), (0, right), (bottom, 0), (bottom, right), center]


class StackedViewsEvaluation(EvaluationProtocol):
    """Views cut by the data pipeline, averaged: cuda-convnet's multiview test.

    The datamodule hands over each test image as a stack of views, (N, V, C, H, W) (CIFAR-10
    with ``preprocessing: cuda-convnet``: the four corner and the centre 24x24 crops and their
    flips, each minus the mean image, as ``convdata.py`` makes them for ``--multiview-test=1``).
    The posteriors of the V views are averaged; view ``center_view`` alone is also scored
    (``test/acc_center``: the single-crop number). A plain (N, C, H, W) batch is one view.

    Args:
        center_view: Index of the centre crop in the stack (4 in torchvision's TenCrop order).
    """

    def __init__(self, center_view: int = 4) -> None:
        self.center_view = center_view

    def posteriors(self, backbone: nn.Module, images: Tensor) -> Tensor:
        return _mean(_softmax(scores) for scores in self._view_scores(backbone, images))

    def evaluate(self, backbone: nn.Module, images: Tensor) -> tuple[Tensor, Tensor | None]:
        views = self._view_scores(backbone, images)
        if len(views) > 1 and not 0 <= self.center_view < len(views):
            raise ConfigError(
                f"StackedViewsEvaluation: center_view={self.center_view}, but the test images "
                f"come as {len(views)} views"
            )
        averaged = _mean(_softmax(scores) for scores in views)
        return _log(averaged), views[self.center_view if len(views) > 1 else 0]

    @staticmethod
    def _view_scores(backbone: nn.Module, images: Tensor) -> list[Tensor]:
        if images.ndim == 4:
            return [backbone(images)]
        return [backbone(images[:, view]) for view in range(images.shape[1])]


class CombinedEvaluation(EvaluationProtocol):
    """The average of several protocols' posteriors, e.g. dense and multi-crop (VGG Table 5).

    Args:
        protocols: The protocols to combine, each weighted equally.
    """

    def __init__(self, protocols: Sequence[EvaluationProtocol]) -> None:
        if not protocols:
            raise ConfigError("model.test_protocol: CombinedEvaluation needs at least one protocol")
        self.protocols = list(protocols)

    def check(self, backbone: nn.Module) -> None:
        for protocol in self.protocols:
            protocol.check(backbone)

    def posteriors(self, backbone: nn.Module, images: Tensor) -> Tensor:
        return _mean(protocol.posteriors(backbone, images) for protocol in self.protocols)


def _check_scales(scales: Sequence[int] | None) -> list[int] | None:
    if scales is None:
        return None
    if not scales or any(scale < 1 for scale in scales):
        raise ConfigError(
            "model.test_protocol: test scales must be a non-empty list of positive sizes, "
            f"got {scales}"
        )
    return list(scales)


def _rescaled(images: Tensor, scales: list[int] | None) -> Iterator[Tensor]:
    """``images`` isotropically rescaled to each shorter side Q in ``scales`` (or as given)."""
    height, width = images.shape[-2:]
    shorter = min(height, width)
    for scale in scales or [shorter]:
        if scale > shorter:
            raise ConfigError(
                f"test scale Q={scale} is larger than the test images ({height}x{width}): the "
                f"datamodule must hand over images of shorter side >= {scale} (data.test_scale: "
                "the largest Q), which are then rescaled on the device"
            )
        if scale == shorter:
            yield images
        else:
            size = (round(height * scale / shorter), round(width * scale / shorter))
            yield F.interpolate(
                images, size=size, mode="bilinear", antialias=True, align_corners=False
            )


def _flips(images: Tensor, flip: bool) -> tuple[Tensor, ...]:
    return (images, images.flip(-1)) if flip else (images,)


def _spread(extent: int, count: int) -> list[int]:
    """``count`` offsets evenly spaced over [0, extent]; the middle one for a single offset."""
    if count == 1:
        return [round(extent / 2)]
    return [round(i * extent / (count - 1)) for i in range(count)]


def _softmax(scores: Tensor) -> Tensor:
    return scores.float().softmax(dim=1)


def _log(posteriors: Tensor) -> Tensor:
    return posteriors.clamp_min(torch.finfo(posteriors.dtype).tiny).log()


def _mean(posteriors: Iterable[Tensor]) -> Tensor:
    total, count = None, 0
    for posterior in posteriors:
        total = posterior if total is None else total + posterior
        count += 1
    assert total is not None, "a protocol always has at least one view"
    return total / count
