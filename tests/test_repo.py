"""The repository's own contracts: install/test commands, dependency lists, lint."""

import re
import subprocess
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _commands_in_readme_block(heading: str) -> list[str]:
    """Shell lines of the first ```bash block after a README heading."""
    text = (ROOT / "README.md").read_text()
    section = text.split(heading, 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line for line in block.splitlines() if line and not line.startswith("#")]


def test_ci_runs_exactly_the_readme_install_and_test_commands():
    ci_lines = [
        line
        for line in (ROOT / ".ci" / "run").read_text().splitlines()
        if line and not line.startswith(("#", "set ", "cd "))
    ]
    readme = _commands_in_readme_block("## Install") + _commands_in_readme_block("## Test")
    assert ci_lines == readme


def test_environment_yml_names_the_same_dependencies_as_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = set(project["dependencies"]) | set(project["optional-dependencies"]["dev"])
    environment = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in environment["dependencies"] if isinstance(d, dict))
    listed = {line for line in pip_section if not line.startswith("-e")}
    assert listed == declared
    assert "python=3.11" in environment["dependencies"]
    assert "-e .[dev]" in pip_section


def test_version_ranges_accept_the_local_torch():
    from packaging.requirements import Requirement

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    by_name = {Requirement(d).name: Requirement(d) for d in deps}
    assert by_name["torch"].specifier.contains("2.14.1")
    assert by_name["torchvision"].specifier.contains("0.29.1")


def test_ruff_clean():
    result = subprocess.run(["ruff", "check", str(ROOT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_github_workflow_runs_exactly_the_readme_install_and_test_commands():
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "ci.yml").read_text())
    steps = workflow["jobs"]["test"]["steps"]
    lines = [
        line.strip()
        for step in steps
        if "run" in step
        for line in step["run"].splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    readme = _commands_in_readme_block("## Install") + _commands_in_readme_block("## Test")
    assert lines == readme
    assert workflow["jobs"]["test"]["env"]["CI"] == "true"


def test_repository_files_people_look_for():
    assert "MIT License" in (ROOT / "LICENSE").read_text()
    assert 'license = { text = "MIT" }' in (ROOT / "pyproject.toml").read_text()
    citation = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert citation["cff-version"] == "1.2.0" and citation["license"] == "MIT"
    titles = " ".join(reference["title"] for reference in citation["references"])
    assert "Very Deep Convolutional Networks" in titles and "ImageNet Classification" in titles
    hooks = yaml.safe_load((ROOT / ".pre-commit-config.yaml").read_text())["repos"]
    ids = {hook["id"] for repo in hooks for hook in repo["hooks"]}
    assert {"ruff", "ruff-format", "nbstripout"} <= ids
