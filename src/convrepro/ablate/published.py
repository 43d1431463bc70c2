"""What others published: the papers' and reference repositories' numbers that reports and the
README set beside ours, each with its source, and what others measured of a grid's effects."""

from __future__ import annotations

from dataclasses import dataclass

# -- published numbers -----------------------------------------------------------------------


@dataclass(frozen=True)
class Published:
    """A published top-1/top-5 number: an error rate, or the change in error that LRN made."""

    model: str
    dataset: str
    top1: float
    top5: float | None
    source: str
    measure: str = "error (%)"
    #: The arm name we give the same architecture (VGG configurations), to line rows up.
    arm: str | None = None
    #: The one ablation whose arm it is; ``None``: any ablation with that arm.
    ablation: str | None = None


_VGG_TABLE3 = (
    "Simonyan & Zisserman, ICLR 2015 (arXiv 1409.1556), Table 3: single-scale evaluation on "
    "ILSVRC-2012 val, rows with training scale S=256 and test scale Q=256"
)
_ALEXNET = "Krizhevsky, Sutskever & Hinton, NeurIPS 2012, sec. 3.3"
_KUANGLIU = "github.com/kuangliu/pytorch-cifar README (VGG16 with BatchNorm)"
_CHENYAOFO = "github.com/chenyaofo/pytorch-cifar-models README"
_HUYVNPHAN = (
    "github.com/huyvnphan/PyTorch_CIFAR10 README ('Val. Acc.', measured on the 10k test images)"
)

#: Every published number the comparison uses, with its source. CIFAR-10 repositories report
#: accuracy; errors here are 100 - accuracy.
PUBLISHED: tuple[Published, ...] = (
    Published("VGG A", "ImageNet", 29.6, 10.4, _VGG_TABLE3, arm="A"),
    Published("VGG A-LRN", "ImageNet", 29.7, 10.5, _VGG_TABLE3, arm="A-LRN"),
    Published("VGG B", "ImageNet", 28.7, 9.9, _VGG_TABLE3, arm="B"),
    Published("VGG C", "ImageNet", 28.1, 9.4, _VGG_TABLE3, arm="C"),
    Published("VGG D", "ImageNet", 27.0, 8.8, _VGG_TABLE3, arm="D"),
    Published("VGG E", "ImageNet", 27.3, 9.0, _VGG_TABLE3, arm="E"),
    Published("AlexNet", "ImageNet", -1.4, -1.2, _ALEXNET, "error change from adding LRN (pp)"),
    Published(
        '4-layer CNN, layers-conv-local-13pct.cfg, the paper\'s "without normalization"',
        "CIFAR-10",
        13.0,
        None,
        _ALEXNET,
        arm="no-lrn",
        ablation="lrn_conv_local_cifar",
    ),
    Published(
        '4-layer CNN, layers-conv-local-11pct.cfg, the paper\'s "with normalization"',
        "CIFAR-10",
        11.0,
        None,
        _ALEXNET,
        arm="lrn",
        ablation="lrn_conv_local_cifar",
    ),
    *(
        Published(
            f"4-layer CNN, layers-conv-local-{arm}.cfg",
            "CIFAR-10",
            error,
            None,
            _ALEXNET,
            arm=arm,
            ablation=ablation,
        )
        for ablation in ("files_conv_local_cifar", "cpu_long_conv_local_cifar")
        for arm, error in (("13pct", 13.0), ("11pct", 11.0))
    ),
    Published("VGG16 (BN)", "CIFAR-10", 100 - 92.64, None, _KUANGLIU, arm="D"),
    Published("vgg11_bn", "CIFAR-10", 100 - 92.79, 100 - 99.72, _CHENYAOFO, arm="A"),
    Published("vgg13_bn", "CIFAR-10", 100 - 94.00, 100 - 99.77, _CHENYAOFO, arm="B"),
    Published("vgg16_bn", "CIFAR-10", 100 - 94.16, 100 - 99.71, _CHENYAOFO, arm="D"),
    Published("vgg19_bn", "CIFAR-10", 100 - 93.91, 100 - 99.64, _CHENYAOFO, arm="E"),
    Published("vgg11_bn", "CIFAR-10", 100 - 92.39, None, _HUYVNPHAN, arm="A"),
    Published("vgg13_bn", "CIFAR-10", 100 - 94.22, None, _HUYVNPHAN, arm="B"),
    Published("vgg16_bn", "CIFAR-10", 100 - 94.00, None, _HUYVNPHAN, arm="D"),
    Published("vgg19_bn", "CIFAR-10", 100 - 93.95, None, _HUYVNPHAN, arm="E"),
)


_LRN_ALONE = (
    "none published: cuda-convnet's history has this very network (the 11pct file 93 s before "
    "its final commit, 3878e8f in dnouri/cuda-convnet) but no number for it; re-implementations "
    "of this LRN on CIFAR-10 report single runs within ±0.4"
)
_FILES_DIFFERENCE = "-2 (13% -> 11%): the paper, sec. 3.3, the two files trained ~520 epochs"

#: What others measured of a grid's effects (test error, percentage points), by ablation and
#: effect label (:meth:`factorial.Factorial.contrasts`, or a label of the file's
#: ``contrasts:``); a test checks every key names an effect of that ablation's file.
PUBLISHED_EFFECTS: dict[tuple[str, str], str] = {
    ("files_conv_local_cifar", "both changes: `11pct` - `13pct`"): _FILES_DIFFERENCE,
    ("cpu_long_conv_local_cifar", "the files' difference"): _FILES_DIFFERENCE,
    ("files_conv_local_cifar", "LRN: off -> on, at local3 width + fc10 wc 13pct (32, 0.004)"): (
        _LRN_ALONE
    ),
    ("cpu_long_conv_local_cifar", "LRN alone, at 13pct widths"): _LRN_ALONE,
}


def published_for(ablation: str, arm: str) -> list[Published]:
    """The published numbers of ``arm`` of ``ablation``."""
    return [p for p in PUBLISHED if p.arm == arm and p.ablation in (None, ablation)]
