"""Building blocks and checks shared by the VGG and AlexNet families."""

from collections.abc import Iterable

import torch.nn.functional as F
from torch import Tensor, nn

from convrepro.errors import ConfigError


class PaperLRN(nn.Module):
    """Local response normalisation as written in Krizhevsky et al. (2012), sec 3.3.

    ``b_i = a_i / (k + alpha * sum_{j=i-n/2}^{i+n/2} a_j^2) ** beta``, the sum running over the
    ``size`` (= n) channels centred on ``i`` that exist. ``torch.nn.LocalResponseNorm`` divides
    ``alpha`` by ``size``, so the paper's ``alpha=1e-4`` is ``LocalResponseNorm(alpha=5e-4)``; this
    module takes the paper's numbers as they are printed. The defaults are the paper's, which VGG's
    A-LRN reuses.

    ``groups > 1`` normalises each contiguous block of ``channels / groups`` maps on its own, as
    the two-GPU AlexNet did: neighbours on the other GPU were not part of the sum.

    The computation runs in float32 whatever the input dtype (under autocast too): squares of
    activations in the hundreds overflow float16. The result is cast back to the input dtype.
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
        self.size, self.alpha, self.beta, self.k, self.groups = size, alpha, beta, k, groups

    def forward(self, x: Tensor) -> Tensor:
        n, c, *spatial = x.shape
        # A float32 input stays float32 here: autocast lowers only matmul/conv-like ops.
        grouped = x.float().reshape(n * self.groups, c // self.groups, *spatial)
        out = F.local_response_norm(grouped, self.size, self.alpha * self.size, self.beta, self.k)
        return out.reshape(x.shape).to(x.dtype)

    def extra_repr(self) -> str:
        groups = f", groups={self.groups}" if self.groups > 1 else ""
        return f"size={self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}{groups}"


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
