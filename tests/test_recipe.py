"""``configs/base.yaml`` is the original notebook's recipe (docs/original/RECIPE.md), setting by
setting: each test names the RECIPE.md line it pins."""

import pickle
import sys

import pytest
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

from cifar_lightning.cli import cli_main
from cifar_lightning.data.augment import BatchAugment
from cifar_lightning.data.datamodule import CIFAR10DataModule, holdout_split

from conftest import REPO, write_image_folder

BASE = str(REPO / "configs" / "base.yaml")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """Trainer, model and data module built from base.yaml by the CLI, as `fit` builds them."""
    cwd = tmp_path_factory.mktemp("recipe")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(cwd)
        patch.setattr(sys, "argv", ["cifar_lightning"])
        return cli_main(["--config", BASE, "--trainer.accelerator", "cpu"], run=False)


def test_inputs_are_scaled_to_unit_range_with_no_normalisation(base):
    # "Inputs scaled to [0, 1] (astype('float32') / 255). No mean/std normalisation."
    images = torch.tensor([0, 51, 255], dtype=torch.uint8).view(1, 1, 1, 3).expand(1, 3, 1, 3)
    assert base.model.preprocess(images).flatten().tolist()[:3] == pytest.approx([0.0, 0.2, 1.0])


def test_optimizer_is_keras_nadam_with_no_schedule_and_no_weight_decay(base):
    # "Nadam(learning_rate=0.0025) ... beta_1 0.9, beta_2 0.999, epsilon 1e-7"; "No learning-rate schedule, no weight decay."
    optimizer = base.model.configure_optimizers()
    assert isinstance(optimizer, torch.optim.NAdam)  # no scheduler returned
    group = optimizer.param_groups[0]
    assert group["lr"] == 0.0025 and group["betas"] == (0.9, 0.999) and group["eps"] == 1e-7
    assert group["weight_decay"] == 0.0 and group["momentum_decay"] == 0.004
    assert base.model.hparams.label_smoothing == 0.0


def test_network_dropout_is_the_original(base):
    hp = base.model.hparams
    assert tuple(hp.conv_dropout) == (0.2, 0.2, 0.3) and hp.dense_dropout == 0.3
    assert sum(p.numel() for p in base.model.net.parameters()) + 1024 == 420_842


def test_augmentation_is_the_notebooks_image_data_generator(base):
    # "rotation_range=17", "width_shift_range=0.08, height_shift_range=0.08", "horizontal_flip=True"
    data = base.datamodule
    augment = data.augment
    assert type(augment) is BatchAugment
    assert (augment.rotation_degrees, augment.shift_fraction, augment.horizontal_flip) == (17.0, 0.08, True)


def test_batches_and_hold_out_are_the_original(base):
    # "Batch size 64, steps_per_epoch = 40000 // 64 = 625"; "the first 20% ... i.e. the first 10,000"
    data = base.datamodule
    assert data.hparams.batch_size == 64 and data.hparams.val_size == 10_000
    train, val = holdout_split(50_000, data.hparams.val_size, data.hparams.seed, source_order=True)
    assert len(val) == 10_000 and len(train) == 40_000
    assert -(-len(train) // data.hparams.batch_size) == 625


def test_early_stopping_and_restored_best_weights_are_the_original(base):
    # "up to 200 epochs"; "EarlyStopping(monitor='val_accuracy', mode='max', patience=35, restore_best_weights=True)"
    trainer = base.trainer
    assert trainer.max_epochs == 200
    (stopping,) = [cb for cb in trainer.callbacks if isinstance(cb, EarlyStopping)]
    assert (stopping.monitor, stopping.mode, stopping.patience) == ("val/acc", "max", 35)
    best = trainer.checkpoint_callback  # the one `fit` tests at the end: the best by val/acc
    assert isinstance(best, ModelCheckpoint) and (best.monitor, best.mode) == ("val/acc", "max")


def test_torchvision_files_hold_out_exactly_data_batch_1(torchvision_folder, tmp_path):
    batch_1 = pickle.loads((torchvision_folder / "cifar-10-batches-py" / "data_batch_1").read_bytes())
    data = CIFAR10DataModule(str(torchvision_folder), val_size=len(batch_1["labels"]), cache_dir=None)
    data.setup("fit")
    expected = torch.from_numpy(batch_1["data"]).view(-1, 3, 32, 32)
    assert torch.equal(data.val_set.images, expected)
    assert data.val_set.labels.tolist() == batch_1["labels"]
    assert len(data.train_set) == 200 - len(batch_1["labels"])


def test_image_folders_hold_out_a_seeded_random_sample_in_random_order(tmp_path):
    folder = write_image_folder(tmp_path / "data", n_train=20, n_test=1)

    def held_out(seed):
        data = CIFAR10DataModule(str(folder), val_size=50, seed=seed, cache_dir=None)
        data.setup("fit")
        return data

    first, again, other = held_out(0), held_out(0), held_out(1)
    assert torch.equal(first.val_set.images, again.val_set.images)
    assert not torch.equal(first.val_set.images, other.val_set.images)
    assert len(first.train_set) == 150
    train_keys = {image.sum().item() for image in first.train_set.images}
    assert train_keys.isdisjoint(image.sum().item() for image in first.val_set.images)
    # Kept in random order, not class order: the first 10 already hold several classes.
    assert len(set(first.val_set.labels[:10].tolist())) >= 4
