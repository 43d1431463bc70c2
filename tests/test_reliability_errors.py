"""What is not a user error keeps its traceback; ``CONVREPRO_DEBUG=1`` shows one for user errors.

Every bad input itself (one ``error:`` line, exit status, what is left on disk) is a row of
``test_user_errors_table.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from bad_inputs import TINY, in_workdir, make_data

from convrepro.cli import main
from convrepro.errors import MissingFileError
from convrepro.training.classifier import ImageClassifier


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_data(tmp_path_factory.mktemp("data"))


@pytest.fixture
def workdir(tmp_path, data, monkeypatch) -> Path:
    in_workdir(tmp_path, monkeypatch)
    (tmp_path / "data").symlink_to(data)
    return tmp_path


def test_debug_variable_shows_the_traceback(workdir, monkeypatch):
    monkeypatch.setenv("CONVREPRO_DEBUG", "1")
    with pytest.raises(MissingFileError):
        main(["fit", *TINY, "--ckpt_path=last"])


def test_a_bug_keeps_its_traceback_and_the_run_folder(workdir, monkeypatch):
    def broken_step(self, batch, batch_idx):
        raise RuntimeError("a bug")

    monkeypatch.setattr(ImageClassifier, "training_step", broken_step)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["fit", *TINY])
    assert any((workdir / "runs").glob("*/*"))  # kept for the post-mortem
