"""What local response normalisation costs: our LRN against torch's, alone and in the networks.

    python benchmarks/lrn.py [--threads N] [--out benchmarks/results]

1. The op: ``PaperLRN`` (a band matmul over channels, backward written out) against
   ``torch.nn.functional.local_response_norm`` (``avg_pool3d`` over a padded copy), forward plus
   backward at (128, 64, 24, 24) float32, and their largest difference.
2. The conv-local network's two arms (``ConvLocalNet``: 11pct with LRN, 13pct without), one
   SGD step of batch 128 on 24x24 crops; and the 11pct layers with local3 at the 13pct width, so
   that the ratio is the cost of LRN alone.
3. Before/after: VGG A-LRN (32 px, batch 64) and the paper's AlexNet (227 px, batch 16), one SGD
   step each with our LRN and with torch's in its place.
4. The conv-local network (``configs/conv_local_cifar.yaml``) trained by Lightning against a plain
   PyTorch loop on the same data: ``throughput.py --only training`` for that config.

Each time is the median of ``--repeats`` timed runs after warm-up, in this process, with
``--threads`` torch threads. Writes ``<out>/lrn_<device>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from common import device, device_name, synchronize, write_record
from throughput import main as throughput_main
from torch import nn

from convrepro.models import VGG, AlexNet, ConvLocalNet, PaperLRN

LRN_SHAPE = (128, 64, 24, 24)
CONV_LOCAL_CONFIG = "configs/conv_local_cifar.yaml"


class TorchLRN(nn.Module):
    """``PaperLRN``'s normalisation computed by torch's own function (the "before")."""

    def __init__(self, lrn: PaperLRN) -> None:
        super().__init__()
        self.lrn = lrn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lrn = self.lrn
        grouped = x.float().reshape(x.shape[0] * lrn.groups, x.shape[1] // lrn.groups, *x.shape[2:])
        out = F.local_response_norm(grouped, lrn.size, lrn.alpha * lrn.size, lrn.beta, lrn.k)
        return out.reshape(x.shape).to(x.dtype)


def with_torch_lrn(model: nn.Module) -> nn.Module:
    """``model`` with every ``PaperLRN`` computed by torch's function instead."""
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, PaperLRN):
                setattr(module, child_name, TorchLRN(child))
    return model


def median_seconds(work: Callable[[], Any], repeats: int, warmup: int = 2) -> float:
    on = device()
    for _ in range(warmup):
        work()
    synchronize(on)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        synchronize(on)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def op_times(repeats: int) -> dict[str, Any]:
    on = device()
    torch.manual_seed(0)
    x = (torch.randn(LRN_SHAPE, device=on) * 3).requires_grad_()
    grad = torch.randn(LRN_SHAPE, device=on)
    ours = PaperLRN()
    theirs = TorchLRN(ours)

    def step(module: nn.Module) -> Callable[[], None]:
        def run() -> None:
            x.grad = None
            module(x).backward(grad)

        return run

    difference = (ours(x) - theirs(x)).abs().max().item()
    x.grad = None
    ours_s, torch_s = median_seconds(step(ours), repeats), median_seconds(step(theirs), repeats)
    return {
        "shape": list(LRN_SHAPE),
        "ours_ms": 1000 * ours_s,
        "torch_ms": 1000 * torch_s,
        "speed_up": torch_s / ours_s,
        "max_abs_difference": difference,
    }


def step_seconds(model: nn.Module, batch: int, size: int, repeats: int) -> float:
    on = device()
    torch.manual_seed(0)
    model = model.to(on)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    images = torch.randn(batch, 3, size, size, device=on) * 50
    labels = torch.randint(0, 10, (batch,), device=on)

    def run() -> None:
        optimizer.zero_grad()
        F.cross_entropy(model(images), labels).backward()
        optimizer.step()

    return median_seconds(run, repeats)


def network_times(repeats: int) -> dict[str, Any]:
    lrn = step_seconds(ConvLocalNet(definition="11pct"), 128, 24, repeats)
    no_lrn = step_seconds(ConvLocalNet(definition="13pct"), 128, 24, repeats)
    lrn_same_width = step_seconds(ConvLocalNet(definition="13pct", lrn=True), 128, 24, repeats)
    lrn_torch = step_seconds(with_torch_lrn(ConvLocalNet(definition="11pct")), 128, 24, repeats)
    return {
        "batch": 128,
        "lrn_arm_ms": 1000 * lrn,
        "no_lrn_arm_ms": 1000 * no_lrn,
        "lrn_arm_over_no_lrn_arm": lrn / no_lrn,
        "lrn_only_ms": 1000 * lrn_same_width,
        "lrn_only_over_no_lrn_arm": lrn_same_width / no_lrn,
        "lrn_arm_with_torch_lrn_ms": 1000 * lrn_torch,
        "lrn_arm_img_per_s": 128 / lrn,
        "no_lrn_arm_img_per_s": 128 / no_lrn,
    }


def before_after(repeats: int) -> dict[str, Any]:
    rows = {}
    for name, build, batch, size in (
        ("VGG A-LRN", lambda: VGG("A-LRN", num_classes=10, head="cifar"), 64, 32),
        ("AlexNet (paper)", lambda: AlexNet("paper", num_classes=10), 16, 227),
    ):
        ours = step_seconds(build(), batch, size, repeats)
        theirs = step_seconds(with_torch_lrn(build()), batch, size, repeats)
        rows[name] = {
            "batch": batch,
            "size": size,
            "torch_lrn_ms": 1000 * theirs,
            "our_lrn_ms": 1000 * ours,
            "speed_up": theirs / ours,
        }
    return rows


def markdown(report: dict[str, Any]) -> str:
    op, net = report["op"], report["network"]
    lines = [
        f"LRN benchmark on {report['device']}, {report['threads']} threads, "
        f"torch {report['torch']}, {report['date']} "
        f"(`python benchmarks/lrn.py --repeats {report['repeats']}`)",
        "",
        "| what | torch's LRN | ours | ratio |",
        "| --- | ---: | ---: | ---: |",
        f"| LRN forward + backward {tuple(op['shape'])} | {op['torch_ms']:.1f} ms | "
        f"{op['ours_ms']:.1f} ms | {op['speed_up']:.2f}x faster |",
        f"| conv-local 11pct (LRN arm), SGD step of 128 | {net['lrn_arm_with_torch_lrn_ms']:.0f} ms"
        f" | {net['lrn_arm_ms']:.0f} ms | "
        f"{net['lrn_arm_with_torch_lrn_ms'] / net['lrn_arm_ms']:.2f}x faster |",
    ]
    for name, row in report["before_after"].items():
        lines.append(
            f"| {name}, SGD step of {row['batch']} at {row['size']} px | "
            f"{row['torch_lrn_ms']:.0f} ms | {row['our_lrn_ms']:.0f} ms | "
            f"{row['speed_up']:.2f}x faster |"
        )
    lines += [
        "",
        f"Largest difference from torch's LRN: {op['max_abs_difference']:.1e}.",
        f"conv-local arms, SGD step of 128: 11pct (LRN) {net['lrn_arm_ms']:.0f} ms "
        f"({net['lrn_arm_img_per_s']:.0f} img/s), 13pct (no LRN) {net['no_lrn_arm_ms']:.0f} ms "
        f"({net['no_lrn_arm_img_per_s']:.0f} img/s): {net['lrn_arm_over_no_lrn_arm']:.2f}x; "
        f"LRN alone (11pct at the 13pct width) {net['lrn_only_over_no_lrn_arm']:.2f}x.",
    ]
    if "lightning_over_plain" in report:
        lines.append(
            f"conv-local 11pct trained by Lightning: {report['lightning_over_plain']:.2f}x the "
            "images/s of a plain PyTorch loop on the same data (`throughput.py`, batch 128)."
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, help="torch threads; default: torch's default")
    parser.add_argument("--repeats", type=int, default=10, help="timed runs per measurement")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument(
        "--no-lightning", action="store_true", help="skip part 4 (Lightning vs a plain loop)"
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    on = device()
    report = {
        "device": device_name(on),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "repeats": args.repeats,
        "op": op_times(args.repeats),
        "network": network_times(args.repeats),
        "before_after": before_after(max(3, args.repeats // 3)),
    }
    if not args.no_lightning:
        timing = ["--steps", "10", "--windows", "3", "--warmup", "3"]
        throughput = throughput_main(
            ["--config", CONV_LOCAL_CONFIG, "--only", "training", "--out", str(args.out), *timing]
        )
        report["lightning_over_plain"] = throughput["ratios"]["lightning/plain"]
    write_record(args.out / f"lrn_{on.type}", report, markdown(report))
    print(markdown(report))
    return report


if __name__ == "__main__":
    main()
