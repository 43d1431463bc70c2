"""The ablation file: arms x seeds, overrides, the `slurm:` section, bad files in one line."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from convrepro.ablate import slurm
from convrepro.ablate.__main__ import main
from convrepro.ablate.slurm_options import SlurmOptions
from convrepro.ablate.spec import format_cli_value, load_spec
from convrepro.errors import AblationError

ROOT = Path(__file__).resolve().parents[1]


def write_ablation_file(
    folder: Path, base_config: str = "trainer:\n  max_epochs: 1\n", seeds=(0, 1), **changes
) -> Path:
    """``base.yaml`` (``base_config``) and the ablation ``tiny_lrn`` over it: arms ``no-lrn``
    (the baseline) and ``lrn``; ``changes`` replace its keys."""
    (folder / "base.yaml").write_text(base_config)
    data = {
        "name": "tiny_lrn",
        "base": "base.yaml",
        "seeds": list(seeds),
        "baseline": "no-lrn",
        "overrides": {"trainer.max_epochs": 2},
        "arms": {
            "no-lrn": {"model.backbone.init_args.lrn": False},
            "lrn": {"model.backbone.init_args.lrn": True},
        },
        **changes,
    }
    path = folder / "ablation.src.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_ablation_file_becomes_runs_with_cli_arguments(tmp_path):
    spec = load_spec(
        write_ablation_file(
            tmp_path, overrides={"model.optimizer": {"class_path": "torch.optim.SGD"}}
        )
    )
    assert spec.name == "tiny_lrn" and spec.base == (tmp_path / "base.yaml").resolve()
    assert [run.id for run in spec.runs()] == [
        "no-lrn-seed0",
        "no-lrn-seed1",
        "lrn-seed0",
        "lrn-seed1",
    ]
    assert spec.runs()[3].cli_args() == [
        "--seed_everything=1",
        "--data.init_args.seed=1",
        '--model.optimizer={"class_path": "torch.optim.SGD"}',
        "--model.backbone.init_args.lrn=true",
    ]
    assert [format_cli_value(v) for v in ("A-LRN", 2, 0.5, None, [1, 2])] == [
        "A-LRN",
        "2",
        "0.5",
        "null",
        "[1, 2]",
    ]


def test_arm_overrides_win_over_common_ones(tmp_path):
    spec = load_spec(
        write_ablation_file(
            tmp_path, baseline=None, arms={"short": {}, "long": {"trainer.max_epochs": 9}}
        )
    )
    assert [dict(run.overrides) for run in spec.runs()[::2]] == [
        {"trainer.max_epochs": 2},
        {"trainer.max_epochs": 9},
    ]
    assert spec.baseline == "short"  # no baseline given: the first arm


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"base": "missing.yaml"}, "base config 'missing.yaml' not found"),
        ({"arms": {}}, "`arms:` must map arm names"),
        ({"seeds": []}, "non-empty list of integers"),
        ({"seeds": [0, "1"]}, "non-empty list of integers"),
        ({"seeds": [1, 1]}, "lists a seed twice"),
        ({"baseline": "bn"}, "baseline 'bn' is not an arm"),
        ({"arms": {"a/b": {}}}, "arm name 'a/b' names a folder"),
        ({"seed": [0]}, "unknown key(s) seed"),
        ({"overrides": {"seed_everything": 3}}, "which the runner sets"),
        ({"overrides": {"--trainer.max_epochs": 3}}, "write keys without dashes"),
        ({"overrides": ["trainer.max_epochs=3"]}, "must map dotted config keys"),
        ({"slurm": {"partitoin": "gpu"}}, "slurm: unknown key(s) partitoin"),
        ({"slurm": {"time": "ten minutes"}}, "is not minutes or [D-]HH:MM:SS"),
        ({"slurm": {"gpus_per_run": -1}}, "gpus_per_run must be a whole number >= 0"),
        ({"slurm": {"gpus_per_run": 3, "nodes": 2}}, "do not split evenly over nodes=2"),
        ({"slurm": {"sbatch": {"array": "0-3"}}}, "is set by the launcher"),
        ({"slurm": {"sbatch": {"time": "1:00:00"}}}, "set time as `time:`"),
    ],
)
def test_bad_ablation_files_say_what_to_fix(tmp_path, changes, message):
    with pytest.raises(AblationError) as error:
        load_spec(write_ablation_file(tmp_path, **changes))
    assert message in str(error.value)


def test_yaml_syntax_error_is_one_line_naming_the_place(tmp_path, capsys):
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: x\narms: {a: {model.lr: 1}\nseeds: [0]\n")
    assert main([str(broken)]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"error: {broken}: not valid YAML (line ") and error.count("\n") == 1


def test_slurm_time_keeps_its_clock_format(tmp_path):
    # YAML 1.1 (PyYAML's default) would read 4:00:00 as the integer 14400: here, 240 minutes
    path = tmp_path / "slurm.yaml"
    path.write_text(write_ablation_file(tmp_path).read_text() + "slurm: {time: 4:00:00, mem: 8G}\n")
    spec = load_spec(path)
    assert spec.slurm.time == "4:00:00" and spec.slurm.time_minutes() == 240
    copy = tmp_path / "copy.yaml"
    copy.write_text(spec.to_yaml())
    assert load_spec(copy).slurm == spec.slurm  # survives the copy in the output folder


def test_one_seed_warns_that_there_will_be_no_statistics(tmp_path):
    with pytest.warns(UserWarning, match="no spread estimate"):
        load_spec(write_ablation_file(tmp_path, seeds=[0]))


@pytest.mark.parametrize("name", ["lrn_vgg_a_cifar", "lrn_alexnet_cifar", "depth_vgg_cifar"])
def test_shipped_ablations_override_keys_their_base_config_has(name):
    spec = load_spec(ROOT / "configs" / "ablations" / f"{name}.yaml")
    assert spec.name == name and len(spec.seeds) >= 3 and len(spec.arms) >= 2
    base = yaml.safe_load(spec.base.read_text())
    for run in spec.runs():
        for key in run.overrides:
            node = base
            for part in key.split("."):
                assert isinstance(node, dict) and part in node, f"{name}: {key} not in base config"
                node = node[part]


def test_slurm_options_become_submitit_parameters():
    options = SlurmOptions(
        partition="gpu",
        time="1-00:30",
        gpus_per_run=4,
        nodes=2,
        cpus_per_task=8,
        mem="64G",
        sbatch={"constraint": "a100"},
    )
    assert slurm.submitit_parameters("lrn", options) == {
        "job_name": "lrn",
        "time": 24 * 60 + 30,
        "nodes": 2,
        "ntasks_per_node": 2,
        "signal_delay_s": 120,
        "stderr_to_stdout": True,
        "additional_parameters": {"requeue": True, "constraint": "a100"},
        "gpus_per_node": 2,
        "partition": "gpu",
        "cpus_per_task": 8,
        "mem": "64G",
    }
    assert slurm.launch_flags(options) == ["--devices-per-node=2", "--num-nodes=2"]
    assert slurm.launch_flags(SlurmOptions()) == []
    overridden = options.with_overrides({"time": "90", "nodes": "1", "sbatch": {"exclude": "n3"}})
    assert overridden.time_minutes() == 90 and overridden.nodes == 1
    assert dict(overridden.sbatch) == {"constraint": "a100", "exclude": "n3"}
    assert options.max_timeouts == 3  # submitit's default
    assert options.with_overrides({"max_timeouts": "12"}).max_timeouts == 12
    with pytest.raises(AblationError, match="max_timeouts must be a whole number >= 0"):
        options.with_overrides({"max_timeouts": "-1"})


def test_command_line_settings_join_every_runs_overrides(tmp_path):
    spec = load_spec(write_ablation_file(tmp_path)).with_settings(
        ["data.init_args.data_dir=/data/cifar10", "trainer.max_epochs=3", "data.init_args.seed="]
    )
    assert spec.overrides == {
        "trainer.max_epochs": 3,  # typed as YAML reads it, and it replaces the file's value
        "data.init_args.data_dir": "/data/cifar10",
        "data.init_args.seed": "",
    }
    run = spec.run("lrn", 0)
    assert "--data.init_args.data_dir=/data/cifar10" in run.cli_args()
    # The grid's own copy of the file records them, so every point and the report see them.
    recorded = yaml.safe_load(spec.to_yaml())["overrides"]
    assert recorded["data.init_args.data_dir"] == "/data/cifar10"


@pytest.mark.parametrize(
    ("setting", "message"),
    [("max_epochs", "write KEY=VALUE"), ("=3", "write KEY=VALUE"), ("seed_everything=1", "runner")],
)
def test_bad_command_line_settings_are_one_line(tmp_path, capsys, setting, message):
    assert main([str(write_ablation_file(tmp_path)), "--dry-run", "--set", setting]) == 2
    error = capsys.readouterr().err
    assert message in error and error.count("\n") == 1


def test_an_arm_written_twice_is_refused_with_both_lines(tmp_path, capsys):
    path = write_ablation_file(tmp_path)
    text = path.read_text().replace(
        "  lrn:\n", "  lrn:\n    model.backbone.init_args.lrn: false\n  lrn:\n", 1
    )
    path.write_text(text)
    lines = text.splitlines()
    first, second = [i + 1 for i, line in enumerate(lines) if line == "  lrn:"]
    assert main([str(path), "--dry-run"]) == 2
    error = capsys.readouterr().err
    assert f"key 'lrn' appears twice, on lines {first} and {second}" in error
    assert error.count("\n") == 1
