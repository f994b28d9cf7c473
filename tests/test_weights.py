"""The shipped models by name: the registry matches the files, a name loads like the path, torch.hub
loads them from a clone, and a plain (non-editable) install carries them."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch

from cifar_lightning import load_classifier
from cifar_lightning.errors import CheckpointError
from cifar_lightning.model.checkpoints import check_checkpoint
from cifar_lightning.model.weights import SHIPPED, WEIGHTS_DIR

from conftest import REPO

IMAGES = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", SHIPPED)
def test_each_entry_is_its_file(name):
    weights = SHIPPED[name]
    weights.verify()  # the SHA-256 in the registry is the file's
    assert weights.path.parent == WEIGHTS_DIR and (REPO / weights.config).is_file()
    checkpoint = check_checkpoint(name)
    assert checkpoint["hyper_parameters"]["temperature"] == pytest.approx(weights.metrics["temperature"], abs=1e-4)


def test_a_name_loads_the_same_model_as_its_path():
    by_name, by_path = load_classifier("cifar10_cnn_robust"), load_classifier(SHIPPED["cifar10_cnn_robust"].path)
    with torch.inference_mode():
        assert torch.equal(by_name.predict_proba(IMAGES), by_path.predict_proba(IMAGES))
    assert by_name.hparams.tta_flip is True


def test_an_unknown_name_says_which_names_there_are(tmp_path):
    with pytest.raises(CheckpointError, match="cifar10_cnn, cifar10_cnn_robust"):
        check_checkpoint(tmp_path / "robustest")


def test_a_file_of_that_name_wins_over_the_shipped_model(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("cifar10_cnn").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        check_checkpoint("cifar10_cnn")


def test_torch_hub_loads_the_shipped_models_from_a_clone():
    robust = torch.hub.load(str(REPO), "cifar10_cnn_robust", source="local")
    untrained = torch.hub.load(str(REPO), "cifar10_cnn", source="local", pretrained=False)
    with torch.inference_mode():
        assert torch.equal(robust.predict_proba(IMAGES), load_classifier("cifar10_cnn_robust").predict_proba(IMAGES))
        original = load_classifier("cifar10_cnn")
        assert not torch.equal(untrained.net.state_dict()["features.0.0.weight"],
                               original.net.state_dict()["features.0.0.weight"])
    assert untrained.hparams.temperature == 1.0 and not untrained.training


@pytest.mark.slow
def test_a_plain_install_in_a_fresh_venv_carries_the_weights(tmp_path):
    """``pip install .`` (not editable) into a new virtual environment, run from outside the clone:
    the shipped models load by name and through torch.hub from the installed package's own files."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    # The dependencies come from this environment (a path line adds its folder, not its .pth hooks,
    # so this checkout's editable install stays out); the package itself is built and installed.
    (Path(site) / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    # From a clone (committed files, as a user gets them; a build in place would leave build/ behind).
    clone = tmp_path / "clone"
    subprocess.run(["git", "-c", "safe.directory=*", "clone", "--quiet", str(REPO), str(clone)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--no-deps", str(clone)], check=True, cwd=tmp_path)
    code = ("import cifar_lightning, torch; from cifar_lightning import load_classifier; "
            "m = load_classifier('cifar10_cnn_robust'); print(cifar_lightning.__file__); "
            "print(m.hparams.temperature, len(m.class_names))")
    result = subprocess.run([str(python), "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    location, facts = result.stdout.splitlines()[-2:]
    assert location.startswith(site) and str(clone) not in location
    temperature, classes = facts.split()
    assert round(float(temperature), 4) == SHIPPED["cifar10_cnn_robust"].metrics["temperature"] and classes == "10"
