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


@pytest.mark.parametrize("lrn", [True, False])
def test_layers_are_the_cfg_files(lrn):
    torch.manual_seed(0)
    model = ConvLocalNet(lrn=lrn)
    definition = "11pct" if lrn else "13pct"
    assert model.definition == definition
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
    lrn = ConvLocalNet(lrn=True).features.rnorm1
    expected = torch.empty_like(x)
    for i in range(64):
        window = x[:, max(0, i - 4) : min(64, i + 5)]
        expected[:, i] = x[:, i] / (1 + 0.001 / 9 * (window**2).sum(1)) ** 0.75
    torch.testing.assert_close(lrn(x.float()).double(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("lrn", "parameters"), [(True, 2_112_970), (False, 1_116_490)])
def test_sizes_and_parameter_counts(lrn, parameters):
    """24 -> 12 -> 6 px as cuda-convnet's parser computes pools (ceil), and the parameter
    counts of those layers: conv biases shared per map, local biases per position."""
    model = ConvLocalNet(lrn=lrn)
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


@pytest.mark.parametrize("lrn", [True, False])
def test_optimiser_groups_are_the_layer_params_files(lrn):
    model = ImageClassifier(ConvLocalNet(lrn=lrn), num_classes=10, optimizer=sgd)
    optimizer = model.configure_optimizers()["optimizer"]
    definition = "11pct" if lrn else "13pct"
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
    model = ImageClassifier(ConvLocalNet(lrn=True), num_classes=10, optimizer=sgd)
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
