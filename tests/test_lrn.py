"""The fast LRN: torch's own numbers (values and gradients), its backward by gradcheck, and
cuda-convnet's parameterisation."""

import pytest
import torch
import torch.nn.functional as F

from convrepro.models import PaperLRN
from convrepro.models.layers import _channel_band, _CrossChannelLRN


def torchs(x, size, alpha, beta, k, groups=1):
    """torch.nn.functional.local_response_norm (which divides alpha by size), per group."""
    n, c = x.shape[:2]
    grouped = x.reshape(n * groups, c // groups, *x.shape[2:])
    return F.local_response_norm(grouped, size, alpha * size, beta, k).reshape(x.shape)


CASES = [
    {"size": 5, "alpha": 1e-4, "beta": 0.75, "k": 2.0},  # AlexNet paper, VGG A-LRN
    {"size": 9, "alpha": 0.001 / 9, "beta": 0.75, "k": 1.0},  # cuda-convnet's rnorm
    {"size": 4, "alpha": 1e-3, "beta": 0.5, "k": 1.5},  # even window, generic power
    {"size": 5, "alpha": 1e-4, "beta": 0.75, "k": 2.0, "groups": 2},  # two-GPU AlexNet
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()))
def test_values_and_gradients_match_torchs_lrn(case):
    torch.manual_seed(0)
    x = (torch.randn(16, 64, 12, 12) * 20).requires_grad_()
    grad = torch.randn_like(x)
    ours = PaperLRN(**case)(x)
    (ours_grad,) = torch.autograd.grad(ours, x, grad)
    theirs = torchs(x, **case)
    (their_grad,) = torch.autograd.grad(theirs, x, grad)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours_grad, their_grad, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()))
def test_backward_passes_gradcheck_in_float64(case):
    torch.manual_seed(0)
    x = torch.randn(2, 8, 3, 3, dtype=torch.float64, requires_grad=True)
    band = _channel_band(8, case["size"], case.get("groups", 1), x.device).double()
    # A large alpha, so that the normalisation term matters for the gradient.
    alpha = case["alpha"] * 1e3
    assert torch.autograd.gradcheck(
        lambda t: _CrossChannelLRN.apply(t, band, alpha, case["beta"], case["k"]), (x,)
    )


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()))
def test_second_derivatives_pass_gradgradcheck_in_float64(case):
    """A gradient penalty or a Hessian-vector product differentiates the backward itself: the
    hand-written one came out wrong without an error (one penalty gradient off by 8%)."""
    torch.manual_seed(0)
    x = torch.randn(2, 8, 3, 3, dtype=torch.float64, requires_grad=True)
    band = _channel_band(8, case["size"], case.get("groups", 1), x.device).double()
    alpha = case["alpha"] * 1e3  # as above: the normalisation term matters
    assert torch.autograd.gradgradcheck(
        lambda t: _CrossChannelLRN.apply(t, band, alpha, case["beta"], case["k"]), (x,)
    )


def test_gradient_penalty_matches_torchs_lrn():
    """The module end to end (float32), as a WGAN-GP style penalty uses it."""
    torch.manual_seed(0)
    case = CASES[0]
    x = (torch.randn(4, 16, 6, 6) * 20).requires_grad_()

    def penalty_gradient(lrn) -> torch.Tensor:
        (grad,) = torch.autograd.grad(lrn(x).square().sum(), x, create_graph=True)
        (second,) = torch.autograd.grad(grad.square().sum(), x)
        return second

    theirs = penalty_gradient(lambda t: torchs(t, **case))
    torch.testing.assert_close(penalty_gradient(PaperLRN(**case)), theirs, rtol=1e-4, atol=1e-4)


def test_cuda_convnet_parameterisation():
    lrn = PaperLRN.cuda_convnet(size=9, scale=0.001, power=0.75)
    assert (lrn.size, lrn.alpha, lrn.beta, lrn.k) == (9, pytest.approx(0.001 / 9), 0.75, 1.0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_keeps_the_window_sum_in_float32(dtype):
    """Under autocast the band matmul would run in half precision; it must not."""
    torch.manual_seed(0)
    x = torch.randn(4, 64, 6, 6) * 50
    expected = PaperLRN()(x)
    with torch.autocast("cpu", dtype=dtype):
        out = PaperLRN()(x)
    assert out.dtype == torch.float32  # a float32 input stays float32
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)
    with torch.autocast("cpu", dtype=dtype):
        half = PaperLRN()(x.to(dtype))
    assert half.dtype == dtype
    torch.testing.assert_close(half.float(), expected, rtol=2e-2, atol=2e-2)
