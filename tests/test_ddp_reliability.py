"""Distributed runs on the CPU (gloo): same numbers as one process, one writer, one run folder.

* Two processes evaluate exactly like one (no sample padded in or counted twice) and one step
  with batch b on each equals one step with batch 2b on one process (gradient averaging).
* A two-node ``torchrun`` launch shares one run folder; a SIGTERM that reaches only one rank
  stops every rank at the same step with one checkpoint, which then resumes on one process.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback, Trainer, seed_everything

from convrepro.cli import ConvReproCLI
from convrepro.data import CIFAR10DataModule
from convrepro.runs import RunFolder
from convrepro.testing import make_cifar10, skip_md5_checks, start_processes
from convrepro.training.classifier import ImageClassifier

from tiny_backbone import TinyNet

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
# Odd evaluation sizes: shards of unequal size, which padding would have evened out.
NUM_TRAIN, NUM_VAL, NUM_TEST, GLOBAL_BATCH = 320, 157, 31, 32


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def one_step_then_evaluate(data_dir: str, devices: int) -> dict:
    """Train one step (no BatchNorm, no dropout: nothing but the gradient differs), evaluate."""
    seed_everything(0)
    datamodule = CIFAR10DataModule(
        data_dir=data_dir,
        val_size=NUM_VAL,
        batch_size=GLOBAL_BATCH,
        num_workers=0,
        download=False,
    )
    model = ImageClassifier(TinyNet(lrn=False), num_classes=10)
    trainer = Trainer(
        accelerator="cpu",
        devices=devices,
        strategy="ddp" if devices > 1 else "auto",
        max_steps=1,
        use_distributed_sampler=False,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, datamodule=datamodule)
    val = trainer.validate(model, datamodule=datamodule, verbose=False)[0]
    test = trainer.test(model, datamodule=datamodule, verbose=False)[0]
    return {
        "weights": {k: v.tolist() for k, v in model.backbone.state_dict().items()},
        "val/acc": val["val/acc"],
        "val/loss": val["val/loss"],
        "test/acc": test["test/acc"],
    }


def one_step_initial_weights() -> dict:
    seed_everything(0)
    return {k: v.tolist() for k, v in TinyNet(lrn=False).state_dict().items()}


def run_rank(rank: int, port: int, data_dir: str, out_dir: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        WORLD_SIZE="2",
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        NODE_RANK="0",
    )
    torch.set_num_threads(1)
    skip_md5_checks(pytest.MonkeyPatch())
    result = one_step_then_evaluate(data_dir, devices=2)
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))


@pytest.fixture(scope="module")
def cifar(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cifar")
    make_cifar10(root / "data" / "cifar10", n_train=NUM_TRAIN + NUM_VAL, n_test=NUM_TEST)
    return root


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_processes_evaluate_and_step_like_one(cifar, tmp_path, monkeypatch):
    data_dir = str(cifar / "data" / "cifar10")
    start_processes(
        run_rank,
        args=(free_port(), data_dir, str(tmp_path)),
        nprocs=2,
    )
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    skip_md5_checks(monkeypatch)
    single = one_step_then_evaluate(data_dir, devices=1)

    for rank in ranks:
        assert rank["val/acc"] == single["val/acc"]  # counts, so exactly
        assert rank["test/acc"] == single["test/acc"]
        for key, value in single["weights"].items():
            torch.testing.assert_close(torch.tensor(rank["weights"][key]), torch.tensor(value))
        assert rank["val/loss"] == pytest.approx(single["val/loss"], rel=1e-6)
    assert single["weights"] != one_step_initial_weights()  # the step changed them


class SignalRankZeroAtStep(Callback):
    """Sends SIGTERM to global rank 0 only, as a scheduler that signals one process would."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step and trainer.global_rank == 0:
            os.kill(os.getpid(), signal.SIGTERM)


CLI_ARGS = [
    "--config",
    str(ROOT / "configs" / "vgg11_cifar.yaml"),
    "--model.backbone=tiny_backbone.TinyNet",
    "--data.init_args.data_dir=data/cifar10",
    f"--data.init_args.batch_size={GLOBAL_BATCH}",
    f"--data.init_args.val_size={NUM_VAL}",
    "--data.init_args.num_workers=0",
    "--trainer.max_epochs=2",
    "--trainer.log_every_n_steps=5",
    "--trainer.enable_progress_bar=false",
    "--run.checkpoint_every_n_steps=4",
]


@pytest.mark.cluster
@pytest.mark.slow
@pytest.mark.timeout(400)
def test_torchrun_two_nodes_share_a_run_and_stop_together_on_sigterm(cifar, monkeypatch):
    env = {
        **os.environ,
        "WANDB_MODE": "offline",
        "PYTHONPATH": os.pathsep.join([str(TESTS / "subprocess_site"), str(TESTS)]),
        "OMP_NUM_THREADS": "1",
    }
    env.pop("CONVREPRO_RUN_ID", None)
    env.pop("WANDB_SERVICE", None)  # each node its own W&B service, as on a cluster
    port = free_port()
    nodes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes=2",
                "--nproc-per-node=1",
                f"--node-rank={node}",
                "--master-addr=127.0.0.1",
                f"--master-port={port}",
                "--rdzv-id=twonodes",
                str(ROOT / "main.py"),
                "fit",
                *CLI_ARGS,
                "--trainer.accelerator=cpu",
                "--trainer.num_nodes=2",
                "--trainer.devices=1",
                "--trainer.strategy=ddp",
                "--trainer.callbacks+=test_ddp_reliability.SignalRankZeroAtStep",
                "--trainer.callbacks.step=2",
            ],
            cwd=cifar,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for node in (0, 1)
    ]
    outputs = [node.communicate(timeout=300)[0] for node in nodes]
    # Each worker exits 143; torchrun reports any non-zero worker exit as its own failure (1).
    assert [node.returncode for node in nodes] == [1, 1], outputs[0][-3000:]
    assert "exitcode  : 143" in outputs[0] and "exitcode  : 143" in outputs[1]

    runs = list((cifar / "runs" / "vgg11_cifar").iterdir())
    assert [run.name for run in runs] == ["twonodes"]  # both nodes: TORCHELASTIC_RUN_ID
    run_dir = runs[0]
    # Rank 1 never saw the signal; the ranks agreed at the next logging step (step 5).
    checkpoints = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert checkpoints == ["interrupted.ckpt", "last.ckpt"]
    interrupted = torch.load(run_dir / "checkpoints" / "interrupted.ckpt", weights_only=True)
    assert interrupted["global_step"] == 5
    assert "stopped at step 5 and saved" in outputs[0]
    # one writer: one config, one W&B run
    assert sorted(p.name for p in run_dir.glob("config*.yaml")) == ["config.yaml"]
    assert len(list((run_dir / "wandb").glob("offline-run-*"))) == 1

    # The same run resumes on a single process (the data position counts global samples).
    skip_md5_checks(monkeypatch)
    monkeypatch.chdir(cifar)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    cli = ConvReproCLI(
        args=["fit", *CLI_ARGS, "--run.id=twonodes", "--ckpt_path=last", "--trainer.logger=false"]
    )
    assert cli.trainer.global_step == 2 * NUM_TRAIN // GLOBAL_BATCH
    assert RunFolder(run_dir).read_summary().epochs == 2
