"""W&B goes offline, with a reason, instead of hanging when it cannot log online."""

import pytest

from convrepro.runs.tracking import wandb_offline_reason


@pytest.fixture
def no_wandb_settings(monkeypatch, tmp_path):
    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("NETRC", str(tmp_path / ".netrc"))
    return tmp_path


def test_offline_mode_from_environment_is_respected(no_wandb_settings, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert wandb_offline_reason() == "WANDB_MODE=offline"


def test_no_api_key_means_offline(no_wandb_settings):
    assert "no W&B API key" in wandb_offline_reason()


def test_api_key_in_netrc_counts(no_wandb_settings, monkeypatch):
    (no_wandb_settings / ".netrc").write_text("machine 127.0.0.1\n  login user\n  password k\n")
    (no_wandb_settings / ".netrc").chmod(0o600)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # discard port: nothing listens
    assert wandb_offline_reason(timeout_s=1.0) == "cannot reach 127.0.0.1:9"


def test_unreachable_server_means_offline_quickly(no_wandb_settings, monkeypatch):
    import time

    monkeypatch.setenv("WANDB_API_KEY", "0" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    started = time.monotonic()
    assert wandb_offline_reason(timeout_s=1.0) == "cannot reach 127.0.0.1:9"
    assert time.monotonic() - started < 5
