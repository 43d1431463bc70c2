"""AlexNet (paper and torchvision variants) and the paper's local response normalisation."""

import pytest
import torch
import torchvision
from torch import nn

from convrepro.models import AlexNet, PaperLRN
from convrepro.models.layers import ReLUWithLRN


def paper_lrn_formula(a, n=5, alpha=1e-4, beta=0.75, k=2.0):
    """Krizhevsky et al. 2012, sec 3.3, written out with explicit sums (float64)."""
    a = a.double()
    channels = a.shape[1]
    out = torch.empty_like(a)
    for i in range(channels):
        neighbours = range(max(0, i - n // 2), min(channels - 1, i + n // 2) + 1)
        total = sum(a[:, j] ** 2 for j in neighbours)
        out[:, i] = a[:, i] / (k + alpha * total) ** beta
    return out


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def paper_alexnet() -> AlexNet:
    torch.manual_seed(0)
    return AlexNet(num_classes=10).eval()


# --- LRN -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [1e-4, 1e-2])
def test_lrn_matches_the_paper_formula_including_edge_channels(alpha):
    torch.manual_seed(0)
    a = torch.randn(2, 7, 3, 4) * 10
    expected = paper_lrn_formula(a, alpha=alpha)
    torch.testing.assert_close(PaperLRN(alpha=alpha)(a).double(), expected, rtol=1e-6, atol=1e-6)
    # The trap this module exists for: torch's LRN divides alpha by the window size.
    torchs = nn.LocalResponseNorm(5, alpha=alpha, beta=0.75, k=2.0)(a).double()
    assert (torchs - expected).abs().max() > 1e-3


def test_grouped_lrn_normalises_each_group_on_its_own():
    a = torch.randn(2, 8, 3, 3) * 30
    halves = torch.cat([PaperLRN()(a[:, :4]), PaperLRN()(a[:, 4:])], dim=1)
    torch.testing.assert_close(PaperLRN(groups=2)(a), halves)
    assert not torch.allclose(PaperLRN()(a), halves)


@pytest.mark.parametrize(("dtype", "rtol"), [(torch.float16, 2e-3), (torch.bfloat16, 1e-2)])
def test_lrn_of_large_half_precision_activations_is_finite_and_accurate(dtype, rtol):
    torch.manual_seed(0)
    a = (torch.rand(2, 16, 5, 5) * 700 + 300).to(dtype)
    if dtype == torch.float16:
        assert torch.isinf(a * a).any()  # a naive fp16 LRN would overflow here
    out = PaperLRN()(a)
    assert out.dtype == dtype
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), PaperLRN()(a.float()), rtol=rtol, atol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_lrn_under_autocast(dtype):
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 16, 3)
    nn.init.constant_(conv.weight, 30.0)  # activations of several hundred
    x = torch.rand(1, 3, 8, 8)
    with torch.autocast("cpu", dtype=dtype):
        y = torch.relu(conv(x))
        out = PaperLRN()(y)
        assert y.dtype == dtype and out.dtype == dtype
        fp32_out = PaperLRN()(x.float())
    assert fp32_out.dtype == torch.float32  # float32 inputs stay float32 under autocast
    assert y.float().max() > 300
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), PaperLRN()(y.float()), rtol=1e-2, atol=0)


# --- AlexNet -------------------------------------------------------------------------------------


def test_paper_geometry_at_227(paper_alexnet):
    x = torch.randn(2, 3, 227, 227)
    with torch.no_grad():
        assert paper_alexnet.features[0](x).shape == (2, 96, 55, 55)
        assert paper_alexnet.features(x).shape == (2, 256, 6, 6)
        assert paper_alexnet(x).shape == (2, 10)
    convs = [m for m in paper_alexnet.features if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [96, 256, 384, 384, 256]
    assert [c.kernel_size[0] for c in convs] == [11, 5, 3, 3, 3]
    pools = [m for m in paper_alexnet.features if isinstance(m, nn.MaxPool2d)]
    assert [(p.kernel_size, p.stride) for p in pools] == [(3, 2)] * 3  # overlapping pooling


def test_paper_variant_defaults_to_lrn_after_conv1_and_conv2(paper_alexnet):
    lrn_slots = [i for i, m in enumerate(paper_alexnet.features) if isinstance(m, ReLUWithLRN)]
    assert lrn_slots == [1, 4]
    lrn = paper_alexnet.features[1][1]
    assert (lrn.size, lrn.alpha, lrn.beta, lrn.k) == (5, 1e-4, 0.75, 2.0)
    # Dropout on the outputs of both hidden FC layers.
    kinds = [type(m).__name__ for m in paper_alexnet.classifier]
    assert kinds == ["Linear", "ReLU", "Dropout", "Linear", "ReLU", "Dropout", "Linear"]


def test_parameter_counts():
    with torch.device("meta"):
        assert n_params(AlexNet()) == 62_378_344
        assert n_params(AlexNet(groups=2)) == 60_965_224  # the paper's "60 million"
        assert n_params(AlexNet("torchvision")) == n_params(torchvision.models.alexnet())


def test_grouped_convs_follow_the_two_gpu_split():
    with torch.device("meta"):
        model = AlexNet(groups=2)
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    assert [c.groups for c in convs] == [1, 2, 1, 2, 2]  # conv3 connects across GPUs
    assert all(m.groups == 2 for m in model.modules() if isinstance(m, PaperLRN))


def test_torchvision_variant_loads_torchvision_weights_with_identical_outputs():
    torch.manual_seed(0)
    theirs = torchvision.models.alexnet().eval()
    ours = AlexNet("torchvision").eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=0)


@pytest.mark.parametrize("variant", ["paper", "torchvision"])
def test_lrn_switch_keeps_every_state_dict_key(variant):
    torch.manual_seed(0)
    without, with_lrn = AlexNet(variant, lrn=False).eval(), AlexNet(variant, lrn=True).eval()
    assert {k: v.shape for k, v in without.state_dict().items()} == {
        k: v.shape for k, v in with_lrn.state_dict().items()
    }
    with_lrn.load_state_dict(without.state_dict(), strict=True)
    x = torch.randn(1, 3, 227, 227)
    with torch.no_grad():
        assert not torch.allclose(with_lrn(x), without(x))  # LRN really is in the forward pass


def test_default_lrn_per_variant():
    with torch.device("meta"):
        assert any(isinstance(m, PaperLRN) for m in AlexNet("paper").modules())
        assert not any(isinstance(m, PaperLRN) for m in AlexNet("torchvision").modules())


def test_paper_init():
    torch.manual_seed(0)
    model = AlexNet(num_classes=10)
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    linears = [m for m in model.classifier if isinstance(m, nn.Linear)]
    for layer in convs[1:] + linears[:2]:
        assert layer.weight.std().item() == pytest.approx(0.01, rel=0.02)
    biases = [layer.bias.unique().tolist() for layer in convs + linears]
    assert biases == [[0.0], [1.0], [0.0], [1.0], [1.0], [1.0], [1.0], [0.0]]


@pytest.mark.parametrize(("variant", "min_size"), [("paper", 67), ("torchvision", 63)])
def test_minimum_input_size_is_exact_and_explained(variant, min_size):
    model = AlexNet(variant, num_classes=10)
    assert model(torch.randn(1, 3, min_size, min_size)).shape == (1, 10)
    too_small = torch.randn(1, 3, min_size - 1, min_size - 1)
    with pytest.raises(RuntimeError):  # without our check, the last max-pool fails
        model.features(too_small)
    with pytest.raises(ValueError, match=rf"at least {min_size}x{min_size}.*resize: 227"):
        model(too_small)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"variant": "caffe"}, "variant='caffe' is not valid"),
        ({"groups": 4}, "groups=4 is not valid; choose one of 1, 2"),
        ({"init": "xavier"}, "init='xavier' is not valid"),
        ({"num_classes": -1}, "num_classes must be a positive integer"),
        ({"weights": "DEFAULT"}, "torchvision has no pretrained weights for AlexNet \\(paper"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AlexNet(**kwargs)


def test_torchvision_weights_name_downloads_into_torch_home_once(tmp_path, monkeypatch):
    """The real enum lookup and hub cache, with only the network transfer replaced."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    torch.manual_seed(0)
    reference = torchvision.models.alexnet().eval()
    downloads = []

    def fake_download(url, dst, *args, **kwargs):
        downloads.append(url)
        torch.save(reference.state_dict(), dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    model = AlexNet("torchvision", weights="DEFAULT").eval()
    again = AlexNet("torchvision", weights="AlexNet_Weights.IMAGENET1K_V1")
    assert downloads == [torchvision.models.AlexNet_Weights.IMAGENET1K_V1.url]
    assert (tmp_path / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth").is_file()
    assert torch.equal(again.classifier[-1].weight, reference.classifier[-1].weight)
    x = torch.randn(1, 3, 227, 227)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=0, atol=0)
