"""ImageClassifier: metrics, optimiser defaults, fine-tuning, compile-safe checkpoints."""

import itertools
import math

import pytest
import torch
from lightning.pytorch import Trainer
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from convrepro.training.classifier import ImageClassifier
from convrepro.training.schedules import WarmupCosineLR


class SmallNet(nn.Module):
    """torchvision layout (features / avgpool / classifier) at toy size."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.avgpool(self.features(x)))


class FixedLogits(nn.Module):
    """Returns pre-set logits so the metric values are known exactly."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits[x[:, 0, 0, 0].long()] + self.dummy


def _trainer(**kwargs) -> Trainer:
    return Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kwargs,
    )


def test_validation_accuracy_is_micro_averaged_without_a_meaningless_top5():
    # 10 samples, 3 classes, imbalanced: 8 of class 0 (all right), 2 of class 1 (both wrong).
    targets = torch.tensor([0] * 8 + [1] * 2)
    logits = torch.zeros(10, 3)
    logits[:8, 0] = 5.0
    logits[8:, 2] = 5.0
    images = torch.arange(10).float().view(10, 1, 1, 1).expand(10, 3, 2, 2).contiguous()
    model = ImageClassifier(FixedLogits(logits), num_classes=3)
    metrics = _trainer().validate(model, DataLoader(TensorDataset(images, targets), batch_size=4))[
        0
    ]
    assert metrics["val/acc"] == pytest.approx(0.8)  # micro; macro would be (1 + 0) / 2 = 0.5
    assert "val/acc_top5" not in metrics  # top-5 of 3 classes is always 1: not logged at all
    expected_loss = nn.functional.cross_entropy(logits, targets).item()
    assert metrics["val/loss"] == pytest.approx(expected_loss, rel=1e-5)


def test_default_optimisation_is_the_papers():
    model = ImageClassifier(SmallNet(), num_classes=10)
    model.trainer = _trainer(max_epochs=1)
    config = model.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]
    assert isinstance(optimizer, torch.optim.SGD)
    group = optimizer.param_groups[0]
    assert (group["lr"], group["momentum"], group["weight_decay"]) == (1e-2, 0.9, 5e-4)
    assert isinstance(scheduler["scheduler"], torch.optim.lr_scheduler.ReduceLROnPlateau)
    assert scheduler["scheduler"].factor == pytest.approx(0.1)
    assert scheduler["monitor"] == "val/acc" and scheduler["scheduler"].mode == "max"


def test_plateau_scheduler_in_min_mode_is_refused():
    model = ImageClassifier(
        SmallNet(),
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min"),
    )
    with pytest.raises(ValueError, match="mode: max"):
        model.configure_optimizers()


def test_warmup_cosine_schedule_shape():
    parameter = nn.Parameter(torch.zeros(()))
    optimizer = torch.optim.SGD([parameter], lr=1.0)
    scheduler = WarmupCosineLR(optimizer, warmup_fraction=0.1, warmup_start_factor=0.0)
    scheduler.set_total_steps(100)
    lrs = []
    for _ in range(100):
        lrs.append(scheduler._factor(scheduler.last_epoch))
        optimizer.step()
        scheduler.step()
    assert lrs[0] == 0.0 and lrs[5] == pytest.approx(0.5) and lrs[10] == pytest.approx(1.0)
    assert lrs[55] == pytest.approx(0.5 * (1 + math.cos(math.pi * 45 / 89)))
    assert lrs[-1] == 0.0  # min_factor at the last optimiser step, as documented
    assert lrs[-2] == pytest.approx(0.5 * (1 + math.cos(math.pi * 88 / 89)))
    assert all(a >= b for a, b in itertools.pairwise(lrs[10:]))


def test_warmup_cosine_without_warmup_steps_starts_at_the_full_lr():
    parameter = nn.Parameter(torch.zeros(()))
    optimizer = torch.optim.SGD([parameter], lr=1.0)
    scheduler = WarmupCosineLR(optimizer, warmup_fraction=0.004, warmup_start_factor=0.1)
    scheduler.set_total_steps(100)  # round(0.4) = 0 warm-up steps
    assert optimizer.param_groups[0]["lr"] == 1.0
    optimizer.step()
    scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.5 * (1 + math.cos(math.pi / 99)))


def test_warmup_cosine_resumed_with_more_steps_replans_instead_of_training_at_zero():
    def scheduler_of(total: int) -> tuple[torch.optim.Optimizer, WarmupCosineLR]:
        optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(()))], lr=1.0)
        scheduler = WarmupCosineLR(optimizer, warmup_fraction=0.1)
        scheduler.set_total_steps(total)
        return optimizer, scheduler

    optimizer, first = scheduler_of(20)
    for _ in range(20):
        optimizer.step()
        first.step()
    assert optimizer.param_groups[0]["lr"] == 0.0  # the 20-step run ended at min_factor
    optimizer, resumed = scheduler_of(40)  # resume with twice the length
    resumed.load_state_dict(first.state_dict())
    assert resumed.total_steps == 40 and resumed.last_epoch == 20
    lrs = []
    for _ in range(20):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        resumed.step()
    assert lrs[0] == pytest.approx(resumed._factor(20)) and lrs[0] > 0.4
    assert all(lr > 0 for lr in lrs[:-1]) and lrs[-1] == 0.0


def test_warmup_cosine_gets_its_length_from_the_trainer():
    model = ImageClassifier(
        SmallNet(), num_classes=10, lr_scheduler=lambda opt: WarmupCosineLR(opt)
    )
    data = TensorDataset(torch.randn(16, 3, 8, 8), torch.randint(0, 10, (16,)))
    trainer = _trainer(max_epochs=2)
    trainer.fit(model, DataLoader(data, batch_size=4))
    scheduler = trainer.lr_scheduler_configs[0]
    assert scheduler.interval == "step"
    assert scheduler.scheduler.total_steps == 8


def test_freeze_features_freezes_weights_and_batchnorm_statistics():
    model = ImageClassifier(SmallNet(), freeze_features=True)
    assert not any(p.requires_grad for p in model.backbone.features.parameters())
    assert all(p.requires_grad for p in model.backbone.classifier.parameters())
    model.train()
    batchnorm = model.backbone.features[1]
    assert not batchnorm.training and model.backbone.classifier.training
    before = batchnorm.running_mean.clone()
    model(torch.randn(4, 3, 8, 8) * 5 + 3)
    assert torch.equal(before, batchnorm.running_mean)
    trainable = {
        id(p) for g in model.configure_optimizers()["optimizer"].param_groups for p in g["params"]
    }
    assert trainable == {id(p) for p in model.backbone.classifier.parameters()}


def test_backbone_lr_scale_gives_pretrained_layers_a_lower_rate():
    optimizer = ImageClassifier(SmallNet(), backbone_lr_scale=0.1).configure_optimizers()[
        "optimizer"
    ]
    by_name = {group["name"]: group for group in optimizer.param_groups}
    assert sorted(by_name) == sorted(
        ["head.weights", "head.biases_norms", "backbone.weights", "backbone.biases_norms"]
    )
    assert {by_name[f"head.{kind}"]["lr"] for kind in ("weights", "biases_norms")} == {1e-2}
    rest = [by_name[f"backbone.{kind}"] for kind in ("weights", "biases_norms")]
    assert [group["lr"] for group in rest] == pytest.approx([1e-3, 1e-3])
    head = [g for g in optimizer.param_groups if g["name"].startswith("head")]
    assert sum(len(group["params"]) for group in head) == 2
    assert sum(len(group["params"]) for group in rest) == 6


def test_compile_and_channels_last_keep_checkpoint_keys():
    plain = ImageClassifier(SmallNet())
    fast = ImageClassifier(SmallNet(), compile=True, channels_last=True)
    assert plain.state_dict().keys() == fast.state_dict().keys()
    plain.load_state_dict(fast.state_dict())
    assert fast.backbone.features[0].weight.is_contiguous(memory_format=torch.channels_last)


def test_predict_step_returns_class_index_and_probability():
    model = ImageClassifier(SmallNet(num_classes=4), num_classes=4).eval()
    output = model.predict_step((torch.randn(3, 3, 8, 8), torch.zeros(3)), 0)
    assert output["index"].shape == (3,) and output["index"].dtype == torch.int64
    torch.testing.assert_close(output["probabilities"].sum(1), torch.ones(3))
    torch.testing.assert_close(output["probability"], output["probabilities"].max(1).values)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"num_classes": 0}, "num_classes"), ({"label_smoothing": 1.0}, "label_smoothing")],
)
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ImageClassifier(SmallNet(), **kwargs)


@pytest.mark.parametrize("backbone_lr_scale", [1.0, 0.1])
def test_weight_decay_reaches_weights_only_unless_asked(backbone_lr_scale):
    def decay_of(decay_all: bool) -> dict[str, float]:
        model = ImageClassifier(
            SmallNet(),
            num_classes=10,
            backbone_lr_scale=backbone_lr_scale,
            decay_biases_and_norms=decay_all,
        )
        optimizer = model.configure_optimizers()["optimizer"]
        group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
        assert len(group_of) == len(list(model.parameters()))
        return {n: group_of[id(p)]["weight_decay"] for n, p in model.backbone.named_parameters()}

    papers = decay_of(False)
    assert papers["features.0.weight"] == papers["classifier.3.weight"] == 5e-4
    for name in ("features.0.bias", "features.1.weight", "features.1.bias", "classifier.3.bias"):
        assert papers[name] == 0.0, name  # conv/linear biases, BatchNorm scale and shift
    assert set(decay_of(True).values()) == {5e-4}
