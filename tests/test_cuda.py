"""The CUDA path: what only a GPU runs. Skipped without one; ``benchmarks/gpu_check.sh`` runs this file on a GPU.

On a CPU-only machine every test here is skipped, so the rest of the suite stays the CPU's; the
same code paths are faked on the CPU elsewhere (eval batch size, precision choice).
"""

from __future__ import annotations

import subprocess
import sys

import lightning as L
import pytest
import torch

from cifar_lightning.data.augment import BatchAugment
from cifar_lightning.data.datamodule import CIFAR10DataModule
from cifar_lightning.infer.predict import predict_probabilities
from cifar_lightning.model.loading import load_classifier
from cifar_lightning.precision import auto_precision

from conftest import REPO, write_image_folder

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (benchmarks/gpu_check.sh)")


def test_automatic_precision_is_mixed_on_the_gpu():
    precision, why = auto_precision("auto")
    assert precision == ("bf16-mixed" if torch.cuda.is_bf16_supported(including_emulation=False) else "16-mixed")
    assert "GPU" in why


def test_batched_augmentation_runs_on_the_gpu(image_folder, tmp_path):
    dm = CIFAR10DataModule(str(image_folder), val_size=50, batch_size=16, cache_dir=str(tmp_path / "cache"))
    trainer = L.Trainer(accelerator="cuda", devices=1, logger=False, enable_progress_bar=False)
    dm.trainer = trainer
    assert dm.eval_batch_size == 1024  # the GPU's evaluation batch
    dm.setup("fit")
    images, labels = next(iter(dm.train_dataloader()))
    batch = dm.transfer_batch_to_device((images, labels), trainer.strategy.root_device, 0)
    trainer.training = True  # the hook augments only while training, as in fit
    augmented, _ = dm.on_after_batch_transfer(batch, 0)
    assert augmented.is_cuda and augmented.dtype == torch.float32 and augmented.shape == images.shape
    assert 0 <= augmented.min() and augmented.max() <= 1
    # Flip alone: every image comes back as itself or its mirror, exactly, on the GPU.
    flipped = BatchAugment(rotation_degrees=0.0, shift_fraction=0.0, horizontal_flip=True)(images.cuda())
    unit = images.cuda().float() / 255
    same = (flipped - unit).abs().amax(dim=(1, 2, 3)) < 1e-5
    mirrored = (flipped - unit.flip(-1)).abs().amax(dim=(1, 2, 3)) < 1e-5
    assert bool((same | mirrored).all()) and same.any() and mirrored.any()


def test_gpu_predictions_match_the_cpu(trained):
    model = load_classifier(trained.ckpt)
    images = torch.randint(0, 256, (300, 3, 32, 32), dtype=torch.uint8)
    on_cpu = predict_probabilities(model, images, batch_size=100)
    on_gpu = predict_probabilities(model.cuda(), images, batch_size=100)
    assert on_gpu.device.type == "cpu"  # returned on the CPU, whatever the model's device
    # cuDNN convolutions may run in TF32 (10-bit mantissa) on the GPU: close, not equal.
    assert (on_gpu - on_cpu).abs().max() < 0.02
    assert (on_gpu.argmax(dim=1) == on_cpu.argmax(dim=1)).float().mean() >= 0.98


def test_fit_on_the_gpu_through_the_cli_and_the_checkpoint_loads_on_the_cpu(tmp_path):
    data_dir = write_image_folder(tmp_path / "data", n_train=20, n_test=5)
    result = subprocess.run(
        [sys.executable, "-m", "cifar_lightning", "fit", "--config", str(REPO / "configs" / "base.yaml"),
         "--data.data_dir", str(data_dir), "--data.val_size", "30", "--data.batch_size", "16",
         "--data.cache_dir", str(tmp_path / "cache"), "--trainer.max_epochs", "2",
         "--trainer.enable_progress_bar", "false"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert "Precision bf16-mixed" in output or "Precision 16-mixed" in output  # chosen for the GPU, and said
    assert "Test accuracy of the best checkpoint" in result.stdout
    model = load_classifier(tmp_path / "checkpoints" / "base" / "last.ckpt")  # written on the GPU, read on the CPU
    assert next(model.parameters()).device.type == "cpu"
    assert predict_probabilities(model, torch.zeros(2, 3, 32, 32, dtype=torch.uint8)).shape == (2, 10)
