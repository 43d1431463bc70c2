"""Building blocks and checks shared by the VGG and AlexNet families."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

import torch
from torch import Tensor, nn

from convrepro.errors import ConfigError


class PaperLRN(nn.Module):
    """Local response normalisation as written in Krizhevsky et al. (2012), sec 3.3.

    ``b_i = a_i / (k + alpha * sum_{j=i-n/2}^{i+n/2} a_j^2) ** beta``, the sum running over the
    ``size`` (= n) channels centred on ``i`` that exist. ``torch.nn.LocalResponseNorm`` divides
    ``alpha`` by ``size``, so the paper's ``alpha=1e-4`` is ``LocalResponseNorm(alpha=5e-4)``; this
    module takes the paper's numbers as they are printed. The defaults are the paper's, which VGG's
    A-LRN reuses; :meth:`cuda_convnet` builds the same normalisation from a cuda-convnet
    ``cmrnorm`` layer's parameters.

    ``groups > 1`` normalises each contiguous block of ``channels / groups`` maps on its own, as
    the two-GPU AlexNet did: neighbours on the other GPU were not part of the sum.

    The channel window sum is a matmul with a band matrix and the backward is written out
    (:class:`_CrossChannelLRN`): forward plus backward several times faster than
    ``F.local_response_norm`` on the CPU (``benchmarks/lrn.py``), equal to it within float32
    rounding. The computation runs in float32 whatever the input dtype and with autocast off
    (squares of activations in the hundreds overflow float16, and autocast would lower the
    window matmul to half precision). The result is cast back to the input dtype.
    """

    def __init__(
        self,
        size: int = 5,
        alpha: float = 1e-4,
        beta: float = 0.75,
        k: float = 2.0,
        groups: int = 1,
    ) -> None:
        super().__init__()
        if size < 1:
            raise ConfigError(f"LRN size must be at least 1, got {size}")
        self.size, self.alpha, self.beta, self.k, self.groups = size, alpha, beta, k, groups

    @classmethod
    def cuda_convnet(cls, size: int, scale: float, power: float) -> PaperLRN:
        """cuda-convnet's cross-map response normalisation (``type=cmrnorm``) with the
        ``size``, ``scale`` and ``pow`` of its layer files.

        Its parser divides ``scale`` by ``size`` (``layer.py``, ``NormLayerParser.add_params``:
        ``dic['scale'] /= dic['size']`` for cross-map norms) and its kernel adds 1, not the
        paper's 2 (``src/cudaconv2/conv_util.cu``, ``kFCNorm``: ``prod[i] = 1 + addScale *
        prod[i]``), over the window ``-sizeF/2 + filterIdx`` onwards: centred for odd sizes.
        """
        return cls(size=size, alpha=scale / size, beta=power, k=1.0)

    def forward(self, x: Tensor) -> Tensor:
        channels = x.shape[1]
        if channels % self.groups:
            raise ConfigError(
                f"LRN with groups={self.groups} needs a channel count divisible by it, "
                f"got {channels}"
            )
        band = _channel_band(channels, self.size, self.groups, x.device)
        device = x.device.type
        # ("meta" tensors, for model statistics, have no autocast to switch off.)
        with (
            torch.autocast(device_type=device, enabled=False)
            if torch.amp.is_autocast_available(device)
            else contextlib.nullcontext()
        ):
            out = _CrossChannelLRN.apply(x.float(), band, self.alpha, self.beta, self.k)
        return out.to(x.dtype)

    def relative_response(self, x: Tensor) -> Tensor:
        """``alpha * sum(a_j^2) / k`` at every position of ``x``: how far the denominator is
        from the constant ``k``. Near 0, LRN only scales by ``k ** -beta``; the papers' inputs
        (0-255 pixels minus a mean) put it at 1e-2 and more where LRN acts."""
        band = _channel_band(x.shape[1], self.size, self.groups, x.device)
        squares = (x.float() ** 2).reshape(x.shape[0], x.shape[1], -1)
        return (self.alpha / self.k) * torch.matmul(band, squares).view_as(x)

    def extra_repr(self) -> str:
        groups = f", groups={self.groups}" if self.groups > 1 else ""
        return f"size={self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}{groups}"


class _CrossChannelLRN(torch.autograd.Function):
    """``x / (k + alpha * window_sum(x**2)) ** beta`` with a hand-written backward.

    The window sum over channels is one matmul with a 0/1 band matrix (C x C): on 64 channels
    that is far cheaper than the padded ``avg_pool3d`` of ``F.local_response_norm``, and the
    backward needs the same band (transposed) once more. ``x``, the denominator, the scale and
    the output are saved: the backward needs them all.

    The backward is written in differentiable torch ops, so a second derivative (a gradient
    penalty, a Hessian-vector product) is right too: asked for one (``create_graph``), it
    computes the denominator, scale and output again from ``x``, because the saved ones came
    from a forward that autograd did not record and would count as constants. A plain
    backward uses the saved ones, as fast as before.
    """

    @staticmethod
    def forward(ctx, x: Tensor, band: Tensor, alpha: float, beta: float, k: float) -> Tensor:
        denominator, scale, out = _lrn_terms(x, band, alpha, beta, k)
        ctx.save_for_backward(x, band, denominator, scale, out)
        ctx.alpha, ctx.beta, ctx.k = alpha, beta, k
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, band, denominator, scale, out = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: this backward is itself differentiated
            denominator, scale, out = _lrn_terms(x, band, ctx.alpha, ctx.beta, ctx.k)
        n, c = x.shape[:2]
        # d out_i / d x_j = scale_i [i = j] - 2 alpha beta x_j band_ij out_i / d_i
        weighted = (grad * out).reshape(n, c, -1).div_(denominator)
        spread = torch.matmul(band.t(), weighted).view_as(x)
        return (
            torch.addcmul(grad * scale, x, spread, value=-2.0 * ctx.alpha * ctx.beta),
            None,
            None,
            None,
            None,
        )


def _lrn_terms(
    x: Tensor, band: Tensor, alpha: float, beta: float, k: float
) -> tuple[Tensor, Tensor, Tensor]:
    """The denominator ``k + alpha * window_sum(x**2)`` (as ``(n, c, h * w)``), the scale
    ``denominator ** -beta`` and the output ``x * scale`` (both shaped as ``x``)."""
    n, c = x.shape[:2]
    squares = (x * x).reshape(n, c, -1)
    constant = x.new_full((1, 1, 1), k).expand_as(squares)
    denominator = torch.baddbmm(constant, (alpha * band).expand(n, c, c), squares)
    scale = _negative_power(denominator, beta).view_as(x)
    return denominator, scale, x * scale


def _negative_power(values: Tensor, beta: float) -> Tensor:
    """``values ** -beta``; for the papers' 0.75 as ``rsqrt(v) * sqrt(rsqrt(v))``, several
    times faster on the CPU than the generic ``pow``."""
    if beta == 0.75:
        root = torch.rsqrt(values)
        return root * torch.sqrt(root)
    return values.pow(-beta)


def _channel_band(channels: int, size: int, groups: int, device: torch.device) -> Tensor:
    """0/1 matrix whose row ``i`` marks the channels summed for channel ``i``: those from
    ``i - size // 2`` to ``i + (size - 1) // 2`` (torch's window, centred for odd sizes) within
    ``i``'s group of ``channels / groups``."""
    index = torch.arange(channels, device=device)
    offset = index[None, :] - index[:, None]
    same_group = (index[:, None] // (channels // groups)) == (
        index[None, :] // (channels // groups)
    )
    return ((offset >= -(size // 2)) & (offset <= (size - 1) // 2) & same_group).float()


class ReLUWithLRN(nn.Sequential):
    """ReLU followed by :class:`PaperLRN`, occupying the single ``nn.Sequential`` slot of a ReLU.

    Swapping a ReLU for this module switches LRN on without shifting the index of any later
    layer, so networks with and without LRN have identical state-dict keys (the ablation arms
    can exchange checkpoints, and torchvision weights still load).
    """

    def __init__(self, groups: int = 1) -> None:
        super().__init__(nn.ReLU(inplace=True), PaperLRN(groups=groups))


def kaiming_init_(model: nn.Module) -> None:
    """torchvision's VGG initialisation (He et al. 2015 for convs, N(0, 0.01) for linears)."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, 0.0, 0.01)
            nn.init.zeros_(module.bias)


def check_choice(argument: str, value: object, choices: Iterable[object]) -> None:
    """Raise a ConfigError naming the valid choices if ``value`` is not one of them."""
    choices = tuple(choices)
    if value not in choices:
        valid = ", ".join(repr(choice) for choice in choices)
        raise ConfigError(f"{argument}={value!r} is not valid; choose one of {valid}")


def check_num_classes(num_classes: int) -> None:
    """Raise a ConfigError unless ``num_classes`` is a positive integer."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"num_classes must be a positive integer, got {num_classes!r}")


def check_image_batch(x: Tensor, *, min_size: int, model_name: str, advice: str) -> None:
    """Raise one clear ConfigError if ``x`` is not an (N, 3, H, W) batch with H, W >= min_size."""
    if x.ndim != 4 or x.shape[1] != 3:
        raise ConfigError(
            f"{model_name} expects a batch of RGB images shaped (N, 3, H, W), got {tuple(x.shape)}"
        )
    height, width = x.shape[-2:]
    if min(height, width) < min_size:
        raise ConfigError(
            f"{model_name} needs inputs of at least {min_size}x{min_size} px, "
            f"got {height}x{width}; {advice}"
        )
