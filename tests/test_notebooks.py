"""The notebooks run top to bottom headless, and the helpers they stand on (convrepro.explore).

Each notebook is executed by nbclient in a fresh kernel of this interpreter (registered in a
temporary kernelspec folder, so no `ipykernel install` step is needed), in a temporary working
directory, with its parameters overridden papermill-style: a cell injected after the one tagged
``parameters``. Without data or results on disk they use made-up ones, which is what most of
these runs check; two runs point them at data and results in the real on-disk layout instead.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import ipykernel.kernelspec
import nbformat
import numpy as np
import pytest
import torch
import torchvision.models as tvm
from nbclient import NotebookClient
from nbformat.v4 import new_code_cell
from scipy import stats as scipy_stats

from convrepro.ablate import load_spec
from convrepro.ablate.report import collect_results, write_report
from convrepro.data.transforms import CIFAR10_STATS, image_pipeline
from convrepro.explore import (
    count_flops,
    count_parameters,
    denormalize,
    download_wandb_group,
    layer_table,
    markdown_table,
)
from convrepro.models import VGG, AlexNet
from convrepro.testing import MADE_UP_NAME, make_image_folder, write_made_up_ablation

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
KERNEL = "convrepro-test"


@pytest.fixture(scope="module")
def kernel(tmp_path_factory: pytest.TempPathFactory):
    """A kernelspec running this interpreter, visible only to these tests."""
    prefix = tmp_path_factory.mktemp("jupyter")
    ipykernel.kernelspec.install(kernel_name=KERNEL, prefix=str(prefix))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("JUPYTER_PATH", str(prefix / "share" / "jupyter"))
        patch.setenv("JUPYTER_RUNTIME_DIR", str(prefix / "runtime"))
        yield KERNEL


def execute(kernel: str, name: str, cwd: Path, **parameters: Any) -> str:
    """Run notebook ``name`` in ``cwd`` with ``parameters``; its text outputs, and PNG markers.

    Stream text, Markdown and plain-text results are joined in order; every PNG shows up as a
    line ``[image/png]``. A cell that raises fails the test with the cell and traceback.
    """
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    if parameters:
        position = next(
            i for i, c in enumerate(notebook.cells) if "parameters" in c.metadata.get("tags", [])
        )
        injected = new_code_cell("\n".join(f"{k} = {v!r}" for k, v in parameters.items()))
        injected.metadata["tags"] = ["injected-parameters"]
        notebook.cells.insert(position + 1, injected)
    client = NotebookClient(
        notebook, kernel_name=kernel, timeout=120, resources={"metadata": {"path": str(cwd)}}
    )
    # Temporary folders the notebook makes (made-up data, figures) go into cwd, not /tmp.
    client.execute(env={**os.environ, "TMPDIR": str(cwd)})
    return "\n".join(_texts(notebook))


def _texts(notebook: nbformat.NotebookNode):
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            if output.output_type == "stream":
                yield output.text
            elif output.output_type in ("display_data", "execute_result"):
                data = output.data
                if "image/png" in data:
                    yield "[image/png]"
                else:
                    yield data.get("text/markdown") or data.get("text/plain", "")


# -- the notebook files ----------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda p: p.name)
def test_notebooks_are_committed_without_outputs_and_with_one_parameters_cell(path):
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(cell.outputs == [] and cell.execution_count is None for cell in code)
    tagged = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    assert notebook.cells[0].cell_type == "markdown"  # says what the notebook is for


def test_there_are_the_three_notebooks():
    names = sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))
    assert names == ["01_data.ipynb", "02_models.ipynb", "03_lrn_ablation.ipynb"]


# -- running them ----------------------------------------------------------------------------


@pytest.mark.scripts
@pytest.mark.slow
def test_data_notebook_reads_data_on_disk_and_makes_up_what_is_missing(kernel, tmp_path):
    # Pets in the real layout under DATA_ROOT (configs/vgg16_pets.yaml: data/pets); no CIFAR-10,
    # no STL-10, so those two are made up.
    make_image_folder(tmp_path / "data" / "pets", n_per_class=15)
    text = execute(kernel, "01_data.ipynb", tmp_path, REPO=str(ROOT), DATA_ROOT=str(tmp_path))
    # What is missing is said, with how to get it, then made up; 10% of the images held out.
    assert text.count("-> using MADE-UP data instead") == 2
    assert "CIFAR-10 is missing or incomplete in" in text
    # data set | datamodule | train | val | test | classes
    for row in (
        "CIFAR-10 (vgg11_cifar, MADE-UP data) | CIFAR10DataModule | 450 | 50 | 100 | 10",
        "STL-10 (vgg19_stl10, MADE-UP data) | STL10DataModule | 90 | 10 | 50 | 10",
        "pets (vgg16_pets, real data) | ImageFolderDataModule | 27 | 3 | 30 | 2",
    ):
        assert f"| {row} |" in text
    # The made-up test splits are balanced: 10 CIFAR images per class.
    assert "| test | 100 | airplane (10) | airplane (10) | 1.00 |" in text
    # Per data set: class balance, sample grid, augmentation row; the pipelines are the configs'.
    assert text.count("[image/png]") == 9
    assert "RandomCrop(size=(32, 32), padding=[4, 4, 4, 4]" in text
    assert "ColorJitter(brightness=(0.6, 1.4)" in text  # configs/vgg19_stl10.yaml: 0.4


@pytest.mark.scripts
@pytest.mark.slow
def test_models_notebook_matches_the_papers_parameter_counts(kernel, tmp_path):
    text = execute(kernel, "02_models.ipynb", tmp_path, REPO=str(ROOT))
    assert "parameter counts match the paper's Table 2 and torchvision" in text
    # The LRN configs, built by the CLI as a library: LRN acts at their input scale, not at 1/255.
    assert "LRN acts at the papers' input scale in the VGG and AlexNet configs" in text
    assert "| vgg11_lrn_cifar | backbone.features.1.1 | mean-rgb |" in text
    assert "| conv_local_cifar | backbone.features.rnorm1 | mean-image |" in text
    # config | parameters | millions | paper (M) | torchvision | GFLOPs | GMACs | torchvision GMACs
    assert "| D | 138,357,544 | 138.4 | 138 | 138,357,544 | 30.94 | 15.47 | 15.47 |" in text
    assert "| C | 133,638,952 | 133.6 | 134 |  |" in text
    assert "| E | 143,667,240 | 143.7 | 144 | 143,667,240 |" in text
    assert "| paper, LRN, groups=2 (two GPUs) | 227 | 60,965,224 | 61.0 |" in text
    assert "| torchvision | 224 | 61,100,840 | 61.1 | 0.714 |" in text
    # The layer table of A-LRN: LRN in the first ReLU's slot, totals equal to the count above.
    assert "| features.1.1 | PaperLRN | 64 x 224 x 224 | 0 |" in text
    assert "| total |  |  | 132,863,336 |" in text


@pytest.mark.scripts
@pytest.mark.slow
def test_ablation_notebook_labels_made_up_results_and_gets_the_statistics_right(kernel, tmp_path):
    text = execute(kernel, "03_lrn_ablation.ipynb", tmp_path)
    assert "**MADE-UP RESULTS, NOT REAL**" in text
    assert f"written to {tmp_path}" in text  # the kernel's temporary folders are the test's
    assert text.count("[image/png]") == 2  # validation curves, test accuracy

    # The same made-up results, and Welch's test of them as SciPy computes it.
    spec = write_made_up_ablation(tmp_path / "expected")
    results, _ = collect_results(spec, tmp_path / "expected")
    a = [100 * r.test_acc for r in results if r.arm == "A"]
    lrn = [100 * r.test_acc for r in results if r.arm == "A-LRN"]
    welch = scipy_stats.ttest_ind(lrn, a, equal_var=False)
    difference = np.mean(lrn) - np.mean(a)
    assert f"| A-LRN | {difference:+.2f} | " in text
    assert f"| {welch.pvalue:.3f} |" in text
    assert "| 0.100 (20 splits) |" in text  # 3 vs 3 seeds: the exact test's smallest p
    assert f"| {MADE_UP_NAME} | A-LRN | 3 |" in text  # next to the published numbers


@pytest.mark.scripts
@pytest.mark.slow
def test_ablation_notebook_reads_an_ablation_folder(kernel, tmp_path):
    out = tmp_path / "ablation"
    spec = write_made_up_ablation(out, effects={"no-lrn": 0.0, "lrn": 0.01}, seeds=(0, 1))
    write_report(spec, out)  # results.csv, as the runner leaves it
    text = execute(kernel, "03_lrn_ablation.ipynb", tmp_path, ABLATION_DIR=str(out), BASELINE="lrn")
    assert f"source: ablation folder {out.resolve()}" in text
    assert "NOT REAL" not in text
    # BASELINE overrides the ablation's own, in the statistics and next to the paper numbers.
    assert "| arm vs lrn |" in text
    assert re.search(r"\| lrn \| 2 \| [^|]+ \| [^|]+ \| baseline \|", text)
    assert "| no-lrn | 2 |" in text


# -- convrepro.explore -----------------------------------------------------------------------


@pytest.mark.parametrize("config", ["A", "B", "D", "E"])
def test_vgg_parameters_and_flops_equal_torchvision_metadata(config):
    arch = {"A": "vgg11", "B": "vgg13", "D": "vgg16", "E": "vgg19"}[config]
    meta = tvm.get_model_weights(arch).IMAGENET1K_V1.meta
    with torch.device("meta"):
        model = VGG(config)
    assert count_parameters(model) == meta["num_params"]
    assert count_flops(model, 224) / 2e9 == pytest.approx(meta["_ops"], abs=0.005)


def test_layer_table_lists_every_leaf_call_with_shapes_and_parameters():
    with torch.device("meta"):
        model = AlexNet("paper", num_classes=10)
    rows = layer_table(model, 227)
    assert sum(row.params for row in rows) == count_parameters(model)
    first_conv = rows[0]
    assert (first_conv.name, first_conv.kind, first_conv.output_shape) == (
        "features.0",
        "Conv2d",
        (96, 55, 55),
    )
    assert rows[-1].output_shape == (10,)
    assert not any(module._forward_hooks for module in model.modules())  # hooks removed


def test_denormalize_undoes_the_pipelines_normalisation():
    pipeline = image_pipeline([], CIFAR10_STATS)
    pixels = torch.randint(0, 256, (3, 8, 8), dtype=torch.uint8)
    restored = denormalize(pipeline(pixels), pipeline)
    assert torch.allclose(restored, pixels / 255, atol=1e-6)


def test_markdown_table_right_aligns_numbers_and_renders_as_markdown():
    table = markdown_table(["name", "count", "share"], [["a", "1,024", ""], ["b", 3, "5.0 %"]])
    assert table.splitlines() == [
        "| name | count | share |",
        "| --- | ---: | ---: |",
        "| a | 1,024 |  |",
        "| b | 3 | 5.0 % |",
    ]
    assert table._repr_markdown_() == repr(table) == str(table)  # Jupyter, and consoles


class FakeWandbRun:
    def __init__(self, arm: str, seed: int, test_acc: float | None) -> None:
        self.tags = ["from-the-config", arm, f"seed-{seed}"]  # the runner appends arm and seed
        self.summary = {"val/acc_best": 0.6}
        if test_acc is not None:
            self.summary |= {"test/acc": test_acc, "test/acc_top5": 0.99}
        self.url = f"https://wandb.ai/x/y/runs/{arm}-{seed}"

    def scan_history(self, keys: list[str]):
        assert keys == ["epoch", "val/acc"]
        return [{"epoch": 0, "val/acc": 0.4}, {"epoch": 1, "val/acc": 0.6}]


class FakeWandbApi:
    def __init__(self, runs: list[Any]) -> None:
        self._runs = runs
        self.queries: list[tuple[str, dict]] = []

    def runs(self, project: str, filters: dict):
        self.queries.append((project, filters))
        return self._runs


def test_a_wandb_group_becomes_an_ablation_folder_the_report_reads(tmp_path):
    # newest first, as W&B lists them
    runs = [FakeWandbRun(arm, seed, 0.8 + seed / 100) for arm in ("A-LRN", "A") for seed in (1, 0)]
    runs.append(FakeWandbRun("A-LRN", 2, None))  # still training
    untagged = FakeWandbRun("A", 0, 0.9)
    untagged.tags = ["debug", "A"]
    api = FakeWandbApi([*runs, untagged])

    spec = download_wandb_group("me/convrepro", "lrn", tmp_path, baseline="A", api=api)

    assert api.queries == [("me/convrepro", {"group": "lrn"})]
    assert (spec.name, list(spec.arms), spec.seeds, spec.baseline) == (
        "lrn",
        ["A", "A-LRN"],
        (0, 1, 2),
        "A",
    )
    reloaded = load_spec(tmp_path / "ablation.yaml", need_base=False)
    results, missing = collect_results(reloaded, tmp_path)
    assert [(r.arm, r.seed, r.test_acc) for r in results] == [
        ("A", 0, 0.8),
        ("A", 1, 0.81),
        ("A-LRN", 0, 0.8),
        ("A-LRN", 1, 0.81),
    ]
    assert missing == ["A-seed2", "A-LRN-seed2"]
    history = (tmp_path / "runs" / "lrn" / "A-seed0" / "history.csv").read_text()
    assert history.splitlines() == ["epoch,val/acc", "0,0.4", "1,0.6"]
    with pytest.raises(ValueError, match="'B' is not an arm"):
        download_wandb_group("me/convrepro", "lrn", tmp_path / "other", baseline="B", api=api)
