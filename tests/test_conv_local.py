"""cuda-convnet's conv-local CIFAR-10 network, held against its layer files and its arithmetic."""

import importlib
from functools import partial
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from convrepro.errors import ConfigError
from convrepro.models import ConvLocalNet, LocallyConnected2d, PaperLRN
from convrepro.models.conv_local import BASE_EPS
from convrepro.training import ImageClassifier, WeightsMultiStepLR

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

# layers-conv-local-{11,13}pct.cfg, section by section: (type, filters, filterSize, padding,
# initW) for the weight layers; pool sizeX=3 stride=2; rnorm size=9 (11pct only).
CFG = {
    "11pct": {
        "conv1": ("conv", 64, 5, 2, 0.0001),
        "conv2": ("conv", 64, 5, 2, 0.01),
        "local3": ("local", 64, 3, 1, 0.04),
        "local4": ("local", 32, 3, 1, 0.04),
        "fc10": ("fc", 10, None, None, 0.01),
    },
    "13pct": {
        "conv1": ("conv", 64, 5, 2, 0.0001),
        "conv2": ("conv", 64, 5, 2, 0.01),
        "local3": ("local", 32, 3, 1, 0.04),
        "local4": ("local", 32, 3, 1, 0.04),
        "fc10": ("fc", 10, None, None, 0.01),
    },
}
# layer-params-conv-local-{11,13}pct.cfg: epsW, epsB, momW, momB, wc.
PARAMS = {
    "11pct": {
        "conv1": (0.001, 0.002, 0.9, 0.9, 0.0),
        "conv2": (0.001, 0.002, 0.9, 0.9, 0.0),
        "local3": (0.001, 0.002, 0.9, 0.9, 0.004),
        "local4": (0.001, 0.002, 0.9, 0.9, 0.004),
        "fc10": (0.001, 0.002, 0.9, 0.9, 0.01),
    },
    "13pct": {
        "conv1": (0.001, 0.002, 0.9, 0.9, 0.0),
        "conv2": (0.001, 0.002, 0.9, 0.9, 0.0),
        "local3": (0.001, 0.002, 0.9, 0.9, 0.004),
        "local4": (0.001, 0.002, 0.9, 0.9, 0.004),
        "fc10": (0.001, 0.002, 0.9, 0.9, 0.004),
    },
}
TYPES = {"conv": nn.Conv2d, "local": LocallyConnected2d, "fc": nn.Linear}


def layer(model: ConvLocalNet, name: str) -> nn.Module:
    return model.classifier.fc10 if name == "fc10" else model.features.get_submodule(name)


@pytest.mark.parametrize(("definition", "lrn"), [("11pct", True), ("13pct", False)])
def test_layers_are_the_cfg_files(definition, lrn):
    torch.manual_seed(0)
    model = ConvLocalNet(definition=definition)
    assert model.describe() == f"{definition} file"
    for name, (kind, filters, size, padding, init_w) in CFG[definition].items():
        module = layer(model, name)
        assert isinstance(module, TYPES[kind]), name
        if kind == "fc":
            assert module.out_features == filters
        else:
            out = module.out_channels
            assert (out, module.kernel_size, module.padding) in {
                (filters, size, padding),
                (filters, (size, size), (padding, padding)),
            }, name
        # Gaussian weights with the file's initW, biases 0 (initB's default).
        assert module.weight.std().item() == pytest.approx(init_w, rel=0.1), name
        assert module.weight.mean().abs().item() < init_w / 5, name
        assert torch.count_nonzero(module.bias) == 0, name
    rnorms = [m for m in model.modules() if isinstance(m, PaperLRN)]
    assert len(rnorms) == (2 if lrn else 0)
    names = list(dict(model.features.named_children()))
    order = ["conv1", "relu1", "pool1", "rnorm1", "conv2", "relu2", "rnorm2", "pool2"]
    assert names[:8] == order  # rnorm1 after pool1, rnorm2 before pool2, as the 11pct file
    for pool in (model.features.pool1, model.features.pool2):
        assert (pool.kernel_size, pool.stride, pool.ceil_mode) == (3, 2, True)


def test_rnorm_is_cuda_convnets_formula():
    """x / (1 + scale / size * sum over the 9 centred maps of x^2) ** pow (layer.py divides
    scale by size; conv_util.cu's kFCNorm adds 1)."""
    torch.manual_seed(0)
    x = torch.randn(2, 64, 5, 5, dtype=torch.float64) * 30
    lrn = ConvLocalNet(definition="11pct").features.rnorm1
    expected = torch.empty_like(x)
    for i in range(64):
        window = x[:, max(0, i - 4) : min(64, i + 5)]
        expected[:, i] = x[:, i] / (1 + 0.001 / 9 * (window**2).sum(1)) ** 0.75
    torch.testing.assert_close(lrn(x.float()).double(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("definition", "lrn", "parameters"), [("11pct", True, 2_112_970), ("13pct", False, 1_116_490)]
)
def test_sizes_and_parameter_counts(definition, lrn, parameters):
    """24 -> 12 -> 6 px as cuda-convnet's parser computes pools (ceil), and the parameter
    counts of those layers: conv biases shared per map, local biases per position."""
    model = ConvLocalNet(definition=definition)
    shapes = {}
    for name, module in model.features.named_children():
        module.register_forward_hook(lambda m, i, o, name=name: shapes.__setitem__(name, o.shape))
    assert model(torch.randn(2, 3, 24, 24)).shape == (2, 10)
    assert shapes["conv1"][-1] == 24 and shapes["pool1"][-1] == 12
    assert shapes["pool2"][-1] == 6 and shapes["local4"][1:] == (32, 6, 6)
    assert sum(p.numel() for p in model.parameters()) == parameters
    # About 19 M multiply-adds per image without LRN (the and the paper's small net).
    macs = 24 * 24 * 64 * 75 + 12 * 12 * 64 * 1600
    macs += sum(layer(model, n).weight.numel() for n in ("local3", "local4", "fc10"))
    if not lrn:
        assert 18e6 < macs < 19.5e6


def test_wrong_input_size_is_one_clear_error():
    with pytest.raises(ConfigError, match="24x24"):
        ConvLocalNet()(torch.randn(1, 3, 32, 32))
    local = LocallyConnected2d(4, 8, input_size=6, kernel_size=3, padding=1)
    with pytest.raises(ConfigError, match="built for inputs of 4 x 6 x 6"):
        local(torch.randn(1, 4, 7, 7))


def naive_local(x, module):
    """Loop over output positions: each position's own weights dot its receptive field."""
    padded = F.pad(x, [module.padding] * 4)
    size, k = module.output_size, module.kernel_size
    out = torch.empty(x.shape[0], module.out_channels, size, size, dtype=x.dtype)
    for row in range(size):
        for col in range(size):
            field = padded[:, :, row : row + k, col : col + k].reshape(x.shape[0], -1)
            out[:, :, row, col] = field @ module.weight[row * size + col] + module.bias[:, row, col]
    return out


def test_locally_connected_matches_a_loop_and_gradcheck():
    torch.manual_seed(0)
    module = LocallyConnected2d(3, 5, input_size=6, kernel_size=3, padding=1, init_std=0.3)
    module = module.double()
    with torch.no_grad():
        module.bias.normal_()
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(module(x), naive_local(x, module))
    assert torch.autograd.gradcheck(module, (x,))
    # Weights really are unshared: changing one position's weights changes only that position.
    with torch.no_grad():
        before = module(x)
        module.weight[7].add_(1.0)
        changed = (module(x) - before).abs().sum(dim=(0, 1)) > 0
    assert changed.flatten().nonzero().flatten().tolist() == [7]


def test_locally_connected_under_bf16_autocast():
    torch.manual_seed(0)
    module = LocallyConnected2d(4, 8, input_size=6, kernel_size=3, padding=1, init_std=0.1)
    x = torch.randn(3, 4, 6, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = module(x)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), module(x), rtol=0.05, atol=0.05)
    out.float().sum().backward()
    assert module.weight.grad is not None and module.weight.grad.dtype == torch.float32


@pytest.mark.parametrize("definition", ["11pct", "13pct"])
def test_optimiser_groups_are_the_layer_params_files(definition):
    model = ImageClassifier(ConvLocalNet(definition=definition), num_classes=10, optimizer=sgd)
    optimizer = model.configure_optimizers()["optimizer"]
    by_parameter = {id(p): group for group in optimizer.param_groups for p in group["params"]}
    for name, (eps_w, eps_b, mom_w, mom_b, wc) in PARAMS[definition].items():
        module = layer(model.backbone, name)
        weights, biases = by_parameter[id(module.weight)], by_parameter[id(module.bias)]
        assert (weights["lr"], weights["momentum"], weights["weight_decay"]) == pytest.approx(
            (eps_w, mom_w, wc)
        ), name
        assert (biases["lr"], biases["momentum"], biases["weight_decay"]) == pytest.approx(
            (eps_b, mom_b, 0.0)
        ), name
    assert len(by_parameter) == len(list(model.parameters()))


def sgd(params):
    return torch.optim.SGD(params, lr=BASE_EPS, momentum=0.9, weight_decay=0.0)


def test_two_updates_are_cuda_convnets_arithmetic():
    """weights.cuh, Weights::update(): inc = mom * inc + eps / numCases * grad_sum (the
    gradient is scaled in layer.cu's bpropWeights: scaleGrad = eps / numCases), then
    inc -= wc * eps * W, then W += inc. grad_sum / numCases is the gradient of the mean loss."""
    torch.manual_seed(0)
    model = ImageClassifier(ConvLocalNet(definition="11pct"), num_classes=10, optimizer=sgd)
    optimizer = model.configure_optimizers()["optimizer"]
    fc = model.backbone.classifier.fc10
    weights, biases = fc.weight.detach().clone(), fc.bias.detach().clone()
    inc_w, inc_b = torch.zeros_like(weights), torch.zeros_like(biases)
    images, labels = torch.randn(8, 3, 24, 24) * 50, torch.arange(8)
    for _ in range(2):
        optimizer.zero_grad()
        F.cross_entropy(model(images), labels).backward()
        grad_w, grad_b = fc.weight.grad.clone(), fc.bias.grad.clone()
        optimizer.step()
        # cuda-convnet ascends the log-likelihood: its "gradient" is -grad of the loss.
        inc_w = 0.9 * inc_w + 0.001 * -grad_w - 0.01 * 0.001 * weights
        inc_b = 0.9 * inc_b + 0.002 * -grad_b
        weights, biases = weights + inc_w, biases + inc_b
        torch.testing.assert_close(fc.weight.detach(), weights, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(fc.bias.detach(), biases, rtol=1e-5, atol=1e-7)


def test_own_groups_exclude_backbone_lr_scale():
    model = ImageClassifier(ConvLocalNet(), num_classes=10, optimizer=sgd, backbone_lr_scale=0.1)
    with pytest.raises(ConfigError, match="backbone_lr_scale"):
        model.configure_optimizers()


# The files' three differences, each on its own: (lrn, local3 filters, fc10 wc) -> parameters.
# local3's width changes local3 (6*6 positions x 576 fan-in x width + width*36 biases) and
# local4's fan-in (36 x 9*width x 32); LRN and wc change no parameter.
COMBINATIONS = [
    (lrn, width, wc) for lrn in (False, True) for width in (32, 64) for wc in (0.004, 0.01)
]


def expected_parameters(width: int) -> int:
    fixed = (64 * 75 + 64) + (64 * 1600 + 64) + (36 * 9 * 32 * 32 + 32 * 36) + (1152 * 10 + 10)
    return fixed + 36 * 576 * width + width * 36 + 36 * 9 * width * 32 - 36 * 9 * 32 * 32


@pytest.mark.parametrize("definition", ["11pct", "13pct"])
@pytest.mark.parametrize(("lrn", "width", "wc"), COMBINATIONS)
def test_every_combination_of_the_files_differences(definition, lrn, width, wc):
    """Any mix of the files' differences from either file: the layers, parameter count and
    per-layer optimiser groups are the file's, but for exactly the settings given."""
    model = ConvLocalNet(definition=definition, lrn=lrn, local3_filters=width, fc10_wc=wc)
    assert sum(p.numel() for p in model.parameters()) == expected_parameters(width)
    assert len([m for m in model.modules() if isinstance(m, PaperLRN)]) == (2 if lrn else 0)
    assert model.features.local3.out_channels == width
    assert model.features.local4.in_channels == width
    classifier = ImageClassifier(model, num_classes=10, optimizer=sgd)
    groups = classifier.configure_optimizers()["optimizer"].param_groups
    decay = {group["name"]: group["weight_decay"] for group in groups}
    expected = {
        **{f"{name}.weight": PARAMS[definition][name][4] for name in PARAMS[definition]},
        **{f"{name}.bias": 0.0 for name in PARAMS[definition]},
        "fc10.weight": wc,
    }
    assert decay == pytest.approx(expected)
    assert model(torch.randn(2, 3, 24, 24)).shape == (2, 10)


@pytest.mark.parametrize(
    ("settings", "file", "described"),
    [
        ({"definition": "13pct"}, "13pct", "13pct file"),
        ({"definition": "11pct"}, "11pct", "11pct file"),
        # The factorial grid's two mixed arms are exactly one file plus or minus its LRN.
        ({"definition": "13pct", "lrn": True}, "13pct", "13pct file + LRN"),
        ({"definition": "11pct", "lrn": False}, "11pct", "11pct file - LRN"),
        # A setting equal to the file's is no change, from either side.
        (
            {"definition": "13pct", "local3_filters": 64, "fc10_wc": 0.01, "lrn": True},
            "13pct",
            "13pct file + LRN local3 64 filters fc10 wc 0.01",
        ),
        ({"definition": "11pct", "local3_filters": 64}, "11pct", "11pct file"),
    ],
)
def test_named_file_presets(settings, file, described):
    model = ConvLocalNet(**settings)
    assert model.definition == file and model.describe() == described
    assert described in model.arch_name


def test_13pct_with_all_of_11pcts_settings_is_the_11pct_network():
    """The decomposition is complete: the three settings are all the files differ in."""
    torch.manual_seed(0)
    eleven = ConvLocalNet(definition="11pct")
    torch.manual_seed(0)
    mixed = ConvLocalNet(definition="13pct", lrn=True, local3_filters=64, fc10_wc=0.01)
    for (name, a), (other, b) in zip(
        eleven.state_dict().items(), mixed.state_dict().items(), strict=True
    ):
        assert name == other and torch.equal(a, b), name
    x = torch.randn(3, 3, 24, 24) * 50
    torch.testing.assert_close(eleven(x), mixed(x))
    groups = [
        ImageClassifier(m, num_classes=10, optimizer=sgd).configure_optimizers()
        for m in (eleven, mixed)
    ]
    strip = [
        [{k: v for k, v in g.items() if k != "params"} for g in c["optimizer"].param_groups]
        for c in groups
    ]
    assert strip[0] == strip[1]


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"definition": "12pct"}, "definition '12pct' is not one of"),
        ({"local3_filters": 0}, "local3_filters must be >= 1"),
        ({"fc10_wc": -0.1}, "fc10_wc >= 0"),
    ],
)
def test_bad_settings_are_one_clear_error(settings, message):
    with pytest.raises(ConfigError, match=message):
        ConvLocalNet(**settings)


def _scheduled_rates(config: str) -> tuple[list[tuple[float, float]], list[int], float]:
    """Each epoch's (epsW, epsB) of conv1 under ``config``'s optimiser and LR schedule, and the
    schedule's milestones and gamma."""
    settings = yaml.safe_load((CONFIGS / config).read_text())
    scheduler = settings["model"]["lr_scheduler"]
    module, name = scheduler["class_path"].rsplit(".", 1)
    args = scheduler["init_args"]
    model = ImageClassifier(
        ConvLocalNet(),
        num_classes=10,
        optimizer=lambda p: torch.optim.SGD(p, **settings["model"]["optimizer"]["init_args"]),
        lr_scheduler=partial(getattr(importlib.import_module(module), name), **args),
    )
    built = model.configure_optimizers()
    optimizer, schedule = built["optimizer"], built["lr_scheduler"]["scheduler"]
    named = {group["name"]: group for group in optimizer.param_groups}
    rates = []
    for _ in range(settings["trainer"]["max_epochs"]):
        rates.append((named["conv1.weight"]["lr"], named["conv1.bias"]["lr"]))
        optimizer.step()  # no gradients: nothing moves; torch wants a step before the schedule's
        schedule.step()
    return rates, args["milestones"], args.get("gamma", 0.1)


@pytest.mark.parametrize(
    "config", ["paper/conv_local_cifar.yaml", "paper/conv_local_cifar_fold_in.yaml"]
)
def test_paper_schedules_lower_epsw_only(config):
    """The methodology: "Lower learning rates (epsW) by a factor of 10"; epsB stays."""
    rates, milestones, gamma = _scheduled_rates(config)
    for epoch, (eps_w, eps_b) in enumerate(rates):
        drops = sum(epoch >= m for m in milestones)
        assert (eps_w, eps_b) == pytest.approx((0.001 * gamma**drops, 0.002)), epoch


def test_cpu_protocol_keeps_its_published_drop_of_epsw_and_epsb_alike():
    """configs/conv_local_cifar.yaml's grids (and the published one) ran with both lowered."""
    rates, milestones, gamma = _scheduled_rates("conv_local_cifar.yaml")
    assert milestones == [3]
    assert rates[2] == pytest.approx((0.001, 0.002))
    assert rates[3] == pytest.approx((0.001 * gamma, 0.002 * gamma))


def test_weights_only_schedule_needs_named_weight_groups():
    model = ImageClassifier(
        nn.Sequential(nn.Flatten(), nn.Linear(12, 10)),
        num_classes=10,
        optimizer=sgd,
        lr_scheduler=partial(WeightsMultiStepLR, milestones=[1]),
    )
    with pytest.raises(ConfigError, match=r"model.lr_scheduler: WeightsMultiStepLR lowers the "):
        model.configure_optimizers()
