"""VGG: Table 1 layouts, torchvision compatibility, heads, inits, warm start, dense evaluation."""

import urllib.error

import pytest
import torch
import torchvision
from torch import nn

from convrepro.errors import MissingFileError
from convrepro.models import VGG
from convrepro.models.layers import PaperLRN, ReLUWithLRN
from convrepro.models.vgg import CONFIGS, make_layers

TORCHVISION_NAMES = {"A": "vgg11", "B": "vgg13", "D": "vgg16", "E": "vgg19"}
# Paper Table 2, millions of parameters.
TABLE_2_MILLIONS = {"A": 133, "A-LRN": 133, "B": 133, "C": 134, "D": 138, "E": 144}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def vgg_a() -> VGG:
    torch.manual_seed(0)
    return VGG("A").eval()


@pytest.mark.parametrize("config", list(TABLE_2_MILLIONS))
def test_parameter_count_matches_table_2_and_torchvision(config):
    with torch.device("meta"):
        count = n_params(VGG(config))
        if config in TORCHVISION_NAMES:
            assert count == n_params(getattr(torchvision.models, TORCHVISION_NAMES[config])())
    assert round(count / 1e6) == TABLE_2_MILLIONS[config]
    if config == "D":
        assert count == 138_357_544


@pytest.mark.parametrize("batch_norm", [False, True])
@pytest.mark.parametrize("config", list(TORCHVISION_NAMES))
def test_state_dict_layout_equals_torchvision(config, batch_norm):
    name = TORCHVISION_NAMES[config] + ("_bn" if batch_norm else "")
    with torch.device("meta"):
        ours = VGG(config, batch_norm=batch_norm).state_dict()
        theirs = getattr(torchvision.models, name)().state_dict()
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}


@pytest.mark.parametrize("batch_norm", [False, True])
@pytest.mark.parametrize("config", list(TORCHVISION_NAMES))
def test_trunk_computes_like_torchvision(config, batch_norm):
    torch.manual_seed(0)
    theirs = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs[config], batch_norm)
    ours = make_layers(CONFIGS[config], batch_norm)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    if batch_norm:  # non-trivial running statistics, so eval mode really uses them
        for bn in (m for m in theirs.modules() if isinstance(m, nn.BatchNorm2d)):
            bn.running_mean.uniform_(-0.1, 0.1)
            bn.running_var.uniform_(0.5, 2.0)
        ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(ours.eval()(x), theirs.eval()(x), rtol=0, atol=0)


def test_whole_vgg16_equals_torchvision_at_224():
    torch.manual_seed(0)
    theirs = torchvision.models.vgg16().eval()
    ours = VGG("D").eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=0)


def test_a_lrn_is_a_with_paper_lrn_after_first_conv():
    with torch.device("meta"):
        a, a_lrn = VGG("A"), VGG("A-LRN")
    assert isinstance(a_lrn.features[1], ReLUWithLRN)
    lrn = a_lrn.features[1][1]
    assert isinstance(lrn, PaperLRN)
    assert (lrn.size, lrn.alpha, lrn.beta, lrn.k) == (5, 1e-4, 0.75, 2.0)
    assert sum(isinstance(m, PaperLRN) for m in a_lrn.modules()) == 1
    # Same keys: A weights (and A-LRN checkpoints) are interchangeable.
    assert a.state_dict().keys() == a_lrn.state_dict().keys()


def test_c_has_1x1_convs_as_third_layer_of_stages_3_to_5():
    with torch.device("meta"):
        c = VGG("C")
    convs = [m for m in c.features if isinstance(m, nn.Conv2d)]
    one_by_one = [i for i, conv in enumerate(convs) if conv.kernel_size == (1, 1)]
    assert one_by_one == [6, 9, 12]  # conv 7, 10 and 13 of 13
    assert all(convs[i].padding == (0, 0) for i in one_by_one)
    assert [convs[i].out_channels for i in one_by_one] == [256, 512, 512]


@pytest.mark.parametrize("size", [32, 224])
def test_imagenet_head_output_shape(vgg_a, size):
    with torch.no_grad():
        assert vgg_a(torch.randn(1, 3, size, size)).shape == (1, 1000)


@pytest.mark.parametrize("batch_norm", [False, True])
@pytest.mark.parametrize("size", [32, 96])
def test_cifar_head_output_shape(size, batch_norm):
    model = VGG("A", head="cifar", num_classes=10, batch_norm=batch_norm)
    assert model(torch.randn(2, 3, size, size)).shape == (2, 10)
    assert [m.in_features for m in model.classifier if isinstance(m, nn.Linear)] == [512] * 3
    assert model.classifier[-1].out_features == 10


def test_inits():
    torch.manual_seed(0)
    paper = VGG("A", head="cifar", init="paper")
    conv = paper.features[3]  # 128 x 64 x 3 x 3
    assert conv.weight.std().item() == pytest.approx(0.01, rel=0.02)  # the reading that trains
    assert paper.classifier[0].weight.std().item() == pytest.approx(0.01, rel=0.02)
    assert all(m.bias.abs().sum() == 0 for m in paper.modules() if hasattr(m, "bias"))
    literal = VGG("A", head="cifar", init="paper", init_std=0.1)  # "10^-2 variance" as printed
    assert literal.features[3].weight.std().item() == pytest.approx(0.1, rel=0.02)
    with pytest.raises(ValueError, match="init_std must be positive"):
        VGG("A", init="paper", init_std=0.0)

    xavier = VGG("A", head="cifar", init="xavier").features[3]
    bound = (6 / (64 * 9 + 128 * 9)) ** 0.5
    assert xavier.weight.abs().max().item() <= bound
    assert xavier.weight.std().item() == pytest.approx(bound / 3**0.5, rel=0.02)

    kaiming = VGG("A", head="cifar", init="kaiming", batch_norm=True)
    assert kaiming.features[4].weight.std().item() == pytest.approx(
        (2 / (128 * 9)) ** 0.5, rel=0.02
    )
    assert kaiming.classifier[0].weight.std().item() == pytest.approx(0.01, rel=0.02)
    assert torch.all(kaiming.features[1].weight == 1)


def test_dense_equals_fc_model_at_224_and_scores_larger_images(vgg_a):
    dense = vgg_a.dense()
    assert {id(p) for p in dense.parameters()} == {id(p) for p in vgg_a.parameters()}
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(dense(x), vgg_a(x), rtol=0, atol=1e-5)
        scores = dense(torch.randn(1, 3, 256, 384))
    assert scores.shape == (1, 1000)
    assert torch.isfinite(scores).all()
    with pytest.raises(ValueError, match="at least 224x224"):
        dense(torch.randn(1, 3, 223, 400))


def test_dense_shares_weights_rather_than_copying(vgg_a):
    dense = vgg_a.dense()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        before = dense(x)
        vgg_a.classifier[-1].bias += 1.0
        after = dense(x)
        vgg_a.classifier[-1].bias -= 1.0
    torch.testing.assert_close(after, before + 1.0)


def test_dense_cifar_head():
    model = VGG("A", head="cifar", num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.dense()(x), model(x), rtol=0, atol=1e-5)
        assert model.dense()(torch.randn(1, 3, 64, 96)).shape == (1, 10)


def test_warm_start_copies_first_four_convs_and_the_fc_layers_only():
    torch.manual_seed(0)
    net_a = VGG("A", head="cifar", num_classes=10).state_dict()
    for config in ["B", "C", "D", "E"]:
        model = VGG(config, head="cifar", num_classes=10)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        copied = model.warm_start_from(net_a)

        # B-E all open with two 64-channel convs, then two 128-channel convs, each stage ending
        # in a max-pool: stage starts are features.0, .5, .10.
        source_of = {"features.0": "features.0", "features.5": "features.3"}
        source_of |= {"features.10": "features.6", "features.12": "features.8"}
        source_of |= {f"classifier.{i}": f"classifier.{i}" for i in (0, 3, 6)}
        expected = {
            f"{t}.{p}": f"{s}.{p}" for t, s in source_of.items() for p in ("weight", "bias")
        }
        assert sorted(copied) == sorted(expected)
        after = model.state_dict()
        for key, value in after.items():
            reference = net_a[expected[key]] if key in expected else before[key]
            assert torch.equal(value, reference), f"{config}: {key}"


def test_warm_start_with_batch_norm_copies_the_bn_of_each_copied_conv():
    torch.manual_seed(0)
    net_a = VGG("A", head="cifar", num_classes=10, batch_norm=True)
    net_a.features[1].running_mean.uniform_()
    model = VGG("D", head="cifar", num_classes=10, batch_norm=True)
    copied = model.warm_start_from(net_a.state_dict())
    # D_bn: conv, BN, ReLU per layer; stage starts at features.0, .7, .14 (A_bn: .0, .4, .8)
    for target, source in [(0, 0), (1, 1), (7, 4), (8, 5), (14, 8), (15, 9), (17, 11), (18, 12)]:
        for key, value in model.features[target].state_dict().items():
            assert f"features.{target}.{key}" in copied
            assert torch.equal(value, net_a.features[source].state_dict()[key])
    assert len(copied) == 4 * 2 + 4 * 5 + 6  # conv w/b, BN w/b/mean/var/count, 3 FC w/b


def test_warm_start_from_a_file_via_the_constructor(tmp_path):
    net_a = VGG("A", head="cifar", num_classes=10)
    checkpoint = {"state_dict": {f"backbone.{k}": v for k, v in net_a.state_dict().items()}}
    torch.save(checkpoint, tmp_path / "a.ckpt")
    model = VGG("D", head="cifar", num_classes=10, warm_start=str(tmp_path / "a.ckpt"))
    assert torch.equal(model.features[12].weight, net_a.features[8].weight)


def test_warm_start_from_a_file_without_num_batches_tracked_keeps_the_counters():
    net_a = VGG("A", head="cifar", num_classes=10, batch_norm=True).state_dict()
    old_format = {k: v for k, v in net_a.items() if not k.endswith("num_batches_tracked")}
    model = VGG("D", head="cifar", num_classes=10, batch_norm=True)
    copied = model.warm_start_from(old_format)
    assert not any(key.endswith("num_batches_tracked") for key in copied)
    assert torch.equal(model.features[1].running_var, net_a["features.1.running_var"])


def test_missing_warm_start_file_is_reported(tmp_path):
    with pytest.raises(MissingFileError, match=f"no weights file at {tmp_path / 'a.ckpt'}"):
        VGG("D", head="cifar", warm_start=str(tmp_path / "a.ckpt"))


def test_warm_start_refuses_anything_but_a_matching_net_a():
    source = VGG("B", head="cifar", num_classes=10).state_dict()
    with pytest.raises(ValueError, match=r"trained VGG-A .*features.3.weight"):
        VGG("D", head="cifar", num_classes=10).warm_start_from(source)
    other_classes = VGG("A", head="cifar", num_classes=100).state_dict()
    with pytest.raises(ValueError, match=r"num_classes.*classifier.6.weight"):
        VGG("D", head="cifar", num_classes=10).warm_start_from(other_classes)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"config": "F"}, r"config='F' is not valid; choose one of 'A', 'A-LRN', 'B', 'C'"),
        ({"head": "mnist"}, "head='mnist' is not valid"),
        ({"init": "orthogonal"}, "init='orthogonal' is not valid"),
        ({"num_classes": 0}, "num_classes must be a positive integer, got 0"),
        ({"weights": "DEFAULT", "warm_start": "a.ckpt"}, "either weights .* or warm_start"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        VGG(**{"head": "cifar", **kwargs})


def test_too_small_or_malformed_input():
    model = VGG("A", head="cifar", num_classes=10)
    with pytest.raises(ValueError, match=r"at least 32x32 px, got 28x28.*resize"):
        model(torch.randn(1, 3, 28, 28))
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\), got \(3, 32, 32\)"):
        model(torch.randn(3, 32, 32))


@pytest.mark.parametrize("config", ["A-LRN", "C"])
def test_configs_without_torchvision_weights_say_so(config):
    with pytest.raises(ValueError, match=f"torchvision has no pretrained weights for VGG-{config}"):
        VGG(config, weights="IMAGENET1K_V1")


@pytest.mark.parametrize(
    ("config", "batch_norm", "file"),
    [("D", True, "vgg16_bn-6c64b313.pth"), ("E", False, "vgg19-dcbb9e9d.pth")],
)
def test_weights_name_resolves_to_torchvision_url_and_explains_network_failure(
    config, batch_norm, file, tmp_path, monkeypatch
):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    requested = []

    def offline(url, dst, *args, **kwargs):
        requested.append(url)
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(RuntimeError) as error:
        VGG(config, batch_norm=batch_norm, weights="DEFAULT")
    assert requested == [f"https://download.pytorch.org/models/{file}"]
    message = str(error.value)
    assert requested[0] in message
    assert str(tmp_path / "hub" / "checkpoints" / file) in message
    assert "pass the file's path" in message


def test_unknown_weights_name_lists_valid_ones():
    with pytest.raises(
        ValueError, match="valid names: IMAGENET1K_V1, IMAGENET1K_FEATURES, DEFAULT"
    ):
        VGG("D", weights="IMAGENET1K_V2")
