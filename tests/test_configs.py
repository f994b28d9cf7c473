"""Every config the repository ships or documents (``configs/``, ``docs/recipe/``) builds its trainer,
model and data module through the CLI, so a renamed class or setting cannot leave one behind."""

from __future__ import annotations

import pytest

from cli_runner import run_in_process
from conftest import REPO

CONFIGS = sorted([*(REPO / "configs").glob("*.yaml"), *(REPO / "docs" / "recipe").glob("*.yaml")])


def test_the_configs_are_found():
    assert {"base.yaml", "fast.yaml", "robust.yaml", "r8_no_dropout_60ep.yaml"} <= {path.name for path in CONFIGS}


@pytest.mark.parametrize("config", CONFIGS, ids=lambda path: f"{path.parent.name}/{path.name}")
def test_a_config_builds_its_run(config, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing a config names is written here or anywhere: the run is only built
    cli = run_in_process(monkeypatch, "--config", str(config), "--data.data_dir", str(tmp_path), run=False)
    assert cli.trainer.max_epochs >= 1 and cli.model is not None and cli.datamodule is not None
