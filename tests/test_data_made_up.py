"""convrepro.testing: made-up data in the real on-disk formats, learnable when asked; the md5
bypass; the made-up ablation."""

import json
import math
import pickle

import numpy as np
import pytest
import torchvision.datasets.cifar
import torchvision.datasets.stl10

from convrepro.ablate.report import collect_results
from convrepro.testing import (
    MADE_UP_NAME,
    accepting_made_up_files,
    balanced_labels,
    make_cifar10,
    make_images,
    make_stl10,
    skip_md5_checks,
    write_made_up_ablation,
)


def nearest_mean_colour_accuracy(learnable: bool) -> float:
    """Accuracy of classifying test images by the closest training class-mean colour."""
    train_labels, test_labels = balanced_labels(300, 10, 0), balanced_labels(100, 10, 1)
    train = make_images(train_labels, 10, (32, 32), learnable=learnable, seed=0)
    test = make_images(test_labels, 10, (32, 32), learnable=learnable, seed=1)
    colour_means = np.stack([train[train_labels == c].mean(axis=(0, 1, 2)) for c in range(10)])
    test_colours = test.mean(axis=(1, 2))
    distances = ((test_colours[:, None] - colour_means[None]) ** 2).sum(-1)
    return float((distances.argmin(1) == test_labels).mean())


def test_learnable_images_show_their_class_and_noise_does_not():
    assert nearest_mean_colour_accuracy(learnable=True) > 0.9
    assert nearest_mean_colour_accuracy(learnable=False) < 0.3


def test_made_up_data_is_a_pure_function_of_the_arguments(tmp_path):
    first = make_images([1, 2, 3], 10, (8, 8), seed=5)
    assert np.array_equal(first, make_images([1, 2, 3], 10, (8, 8), seed=5))
    assert not np.array_equal(first, make_images([1, 2, 3], 10, (8, 8), seed=6))


@pytest.mark.parametrize("encoding", ["latin1", "bytes"])
def test_cifar_pickles_read_like_the_python2_originals(tmp_path, encoding):
    make_cifar10(tmp_path, n_train=23, n_test=7)
    folder = tmp_path / "cifar-10-batches-py"
    key = (lambda name: name) if encoding == "latin1" else str.encode
    sizes = []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / name, "rb") as file:
            batch = pickle.load(file, encoding=encoding)
        data, labels = batch[key("data")], batch[key("labels")]
        assert data.dtype == np.uint8 and data.shape == (len(labels), 3072)
        assert all(0 <= label < 10 for label in labels)
        sizes.append(len(labels))
    assert sizes == [5, 5, 5, 4, 4, 7]
    with open(folder / "batches.meta", "rb") as file:
        meta = pickle.load(file, encoding=encoding)
    assert len(meta[key("label_names")]) == 10


def test_stl10_binaries_have_the_original_sizes_and_label_range(tmp_path):
    make_stl10(tmp_path, n_train=20, n_test=10, n_unlabeled=3)
    folder = tmp_path / "stl10_binary"
    assert (folder / "train_X.bin").stat().st_size == 20 * 3 * 96 * 96
    assert (folder / "unlabeled_X.bin").stat().st_size == 3 * 3 * 96 * 96
    labels = np.fromfile(folder / "test_y.bin", dtype=np.uint8)
    assert labels.min() == 1 and labels.max() == 10
    folds = (folder / "fold_indices.txt").read_text().splitlines()
    assert len(folds) == 10 and all(len(line.split()) == 4 for line in folds)


def checks() -> tuple:
    return torchvision.datasets.cifar.check_integrity, torchvision.datasets.stl10.check_integrity


def test_md5_bypass_accepts_any_existing_file_and_is_undone(tmp_path, monkeypatch):
    made_up, md5 = tmp_path / "data_batch_1", "c99cafc152244af753f735de768cd75f"  # the real one's
    made_up.write_bytes(b"not the real bytes")
    real_checks = checks()
    assert not any(check(str(made_up), md5) for check in checks())
    with accepting_made_up_files():
        assert all(check(str(made_up), md5) for check in checks())
        assert not any(check(str(tmp_path / "missing"), None) for check in checks())
    assert checks() == real_checks
    with monkeypatch.context() as patch:
        skip_md5_checks(patch)
        assert all(check(str(made_up), md5) for check in checks())
    assert checks() == real_checks


def test_made_up_ablation_is_labelled_and_reproducible(tmp_path):
    first = write_made_up_ablation(tmp_path / "one")
    write_made_up_ablation(tmp_path / "two")
    assert first.name == MADE_UP_NAME and "MADE-UP" in first.name
    results_one, missing = collect_results(first, tmp_path / "one")
    results_two, _ = collect_results(first, tmp_path / "two")
    assert missing == [] and results_one == results_two
    run_dir = tmp_path / "one" / "runs" / MADE_UP_NAME / "A-seed0"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert 0.8 < summary["test/acc"] < 0.95 and not math.isnan(summary["best_val_acc"])
