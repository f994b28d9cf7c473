"""The pieces of configs/fast.yaml: batched random crop, SGD with a per-step one-cycle schedule,
flip test-time augmentation (Python API and ``--model.tta_flip`` with a checkpoint), and the
config itself building the original network."""

from __future__ import annotations

import csv

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import EMAWeightAveraging
from torch.utils.data import DataLoader, TensorDataset

from cifar_lightning import CIFAR10Classifier, CIFAR10DataModule
from cifar_lightning.data.augment import BatchRandomCrop
from cifar_lightning.data.sources import load_split
from cifar_lightning.errors import ConfigError
from cifar_lightning.infer.predict import predict_probabilities
from cifar_lightning.model.loading import load_classifier
from cifar_lightning.model.probabilities import combine_views

from cli_runner import run_in_process
from conftest import REPO, synthetic_images

FAST = str(REPO / "configs" / "fast.yaml")


def test_random_crop_is_a_whole_pixel_window_of_the_reflect_padded_image():
    images = torch.randint(0, 256, (300, 3, 32, 32), dtype=torch.uint8)
    out = BatchRandomCrop(padding=4)(images, generator=torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(images.float() / 255, (4, 4, 4, 4), mode="reflect")
    offsets, flips = set(), 0
    for image, source in zip(out, padded):
        windows = {(top, left, flip): source[:, top:top + 32, left:left + 32]
                   for top in range(9) for left in range(9) for flip in (False, True)}
        matches = [key for key, window in windows.items() if torch.equal(image, window.flip(-1) if key[2] else window)]
        assert matches, "an output image is not a crop (or mirrored crop) of the padded input"
        top, left, flip = matches[0]
        offsets.add((top, left))
        flips += flip
    assert {top for top, _ in offsets} == set(range(9)) and {left for _, left in offsets} == set(range(9))
    assert 0.4 < flips / len(out) < 0.6


def tiny_loader(n: int = 64, batch_size: int = 16) -> DataLoader:
    images, labels = synthetic_images(n // 10 + 1)
    images = torch.from_numpy(images[:n]).permute(0, 3, 1, 2).contiguous()
    return DataLoader(TensorDataset(images, torch.from_numpy(labels[:n]).long()), batch_size=batch_size)


class RecordLR(L.Callback):
    def __init__(self):
        self.lrs = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


def test_onecycle_steps_every_batch_from_warmup_to_peak_to_near_zero():
    L.seed_everything(0)
    model = CIFAR10Classifier(optimizer="sgd", lr=0.1, lr_schedule="onecycle", warmup_fraction=0.25,
                              weight_decay=5e-4)
    record = RecordLR()
    trainer = L.Trainer(max_epochs=5, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[record])
    trainer.fit(model, tiny_loader())  # 4 batches x 5 epochs = 20 steps
    optimizer = trainer.optimizers[0]
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.defaults["nesterov"]
    assert optimizer.defaults["weight_decay"] == 5e-4
    lrs = record.lrs
    assert len(lrs) == 20 and len(set(lrs)) == 20  # a new rate every step, not every epoch
    assert max(lrs) == pytest.approx(0.1, rel=0.05) and lrs.index(max(lrs)) in (4, 5)  # peak after 25%
    assert lrs[0] < 0.1 / 20 and lrs[-1] < 0.1 / 20


def mirror_probabilities(model: CIFAR10Classifier, images: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return (model(images).softmax(-1) + model(images.flip(-1)).softmax(-1)) / 2


def test_tta_flip_averages_the_probabilities_of_image_and_mirror_image():
    torch.manual_seed(0)
    model = CIFAR10Classifier(tta_flip=True).eval()
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    expected = mirror_probabilities(model, images)
    assert torch.allclose(predict_probabilities(model, images), expected, atol=1e-5)
    plain = CIFAR10Classifier(tta_flip=False).eval()
    plain.load_state_dict(model.state_dict())
    assert not torch.allclose(predict_probabilities(plain, images), expected, atol=1e-3)
    symmetric = torch.cat([images[..., :16], images[..., :16].flip(-1)], dim=-1)  # its own mirror image
    assert torch.allclose(predict_probabilities(model, symmetric), predict_probabilities(plain, symmetric), atol=1e-5)


def test_tta_translate_averages_every_view_shifted_both_ways():
    """airbench's test-time views: the image (and mirror) plus each shifted a pixel down-right and
    up-left with reflected edges, their probabilities averaged with equal weight."""
    torch.manual_seed(0)
    model = CIFAR10Classifier(tta_flip=True, tta_translate=1).eval()
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    views = [images.float() / 255, images.flip(-1).float() / 255]
    views += [v for p in (torch.nn.functional.pad(v, (1, 1, 1, 1), mode="reflect") for v in views[:2])
              for v in (p[..., :32, :32], p[..., 2:, 2:])]
    with torch.inference_mode():
        expected = torch.stack([model(v).softmax(-1) for v in views]).mean(0)
        assert model.view_logits(images).shape == (6, 4, 10)
    assert torch.allclose(predict_probabilities(model, images), expected, atol=1e-5)
    assert CIFAR10Classifier(tta_translate=2).eval().view_logits(images).shape[0] == 3
    with pytest.raises(ConfigError, match="tta_translate must be 0"):
        CIFAR10Classifier(tta_translate=9)


def test_tta_flip_from_the_command_line_applies_to_a_checkpoint_trained_without_it(trained, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_in_process(monkeypatch, "predict", "--config", FAST, "--ckpt_path", trained.ckpt, "--model.tta_flip", "true",
                   "--data.data_dir", str(trained.data_dir), "--data.cache_dir", "null", "--trainer.logger", "false",
                   "--trainer.enable_progress_bar", "false", "--trainer.precision", "32-true")
    with open(tmp_path / "predictions" / "predictions.csv", newline="") as file:
        rows = sorted(csv.DictReader(file), key=lambda row: int(row["image"]))  # by index in the source
        from_cli = [float(row["probability"]) for row in rows]
    model = load_classifier(trained.ckpt)
    assert not model.hparams.tta_flip
    images = load_split(trained.data_dir, train=False, cache_dir=None).images  # the rows' order
    with_tta = mirror_probabilities(model.eval(), images).max(-1).values
    without = predict_probabilities(model, images).max(-1).values
    assert len(from_cli) == len(images)
    assert from_cli == pytest.approx(with_tta.tolist(), abs=1e-4)
    assert not torch.allclose(with_tta, without, atol=1e-4)


def test_fast_config_builds_the_original_network_with_the_fast_recipe(tmp_path, monkeypatch):
    """The same 420,842 parameters, at most 30 epochs on all 50,000 images, no checkpoint chosen by a
    score, Lightning's own weight averaging and PyTorch's schedule."""
    cli = run_in_process(monkeypatch, "--config", FAST, "--data.data_dir", str(tmp_path), run=False)
    model, data, trainer = cli.model, cli.datamodule, cli.trainer
    trainable = sum(p.numel() for p in model.net.parameters())
    running_stats = sum(b.numel() for name, b in model.net.named_buffers() if name.endswith(("running_mean", "running_var")))
    assert (trainable, trainable + running_stats) == (419_818, 420_842)
    hp = model.hparams
    assert (hp.optimizer, hp.lr_schedule) == ("nadam", "onecycle") and not hp.tta_flip
    assert 0 < hp.label_smoothing < 1
    assert isinstance(data.augment, BatchRandomCrop) and data.augment.padding == 4
    assert trainer.max_epochs <= 30 and data.hparams.val_size == 0
    assert not any(getattr(callback, "monitor", None) for callback in trainer.callbacks)
    assert sum(isinstance(callback, EMAWeightAveraging) for callback in trainer.callbacks) == 1


def test_val_size_zero_trains_on_every_image_and_skips_validation(image_folder, tmp_path):
    data = CIFAR10DataModule(str(image_folder), val_size=0, batch_size=50, cache_dir=None)
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(CIFAR10Classifier(), datamodule=data)
    assert len(data.train_set) == 200 and len(data.val_set) == 0
    assert trainer.global_step == 4 and "val/acc" not in trainer.callback_metrics


def test_bn_momentum_and_weight_decay_groups_are_settings_of_the_same_network():
    keras = CIFAR10Classifier()
    assert {m.momentum for m in keras.net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)} == {0.01}
    assert len(keras.configure_optimizers().param_groups) == 1
    fast = CIFAR10Classifier(bn_momentum=0.4, weight_decay=5e-4, decay_norm_and_bias=False)
    assert {m.momentum for m in fast.net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)} == {0.4}
    assert sum(p.numel() for p in fast.net.parameters()) == sum(p.numel() for p in keras.net.parameters())
    kernels, others = fast.configure_optimizers().param_groups
    assert kernels["weight_decay"] == 5e-4 and others["weight_decay"] == 0.0
    assert all(p.dim() == 4 or p.dim() == 2 for p in kernels["params"]) and all(p.dim() == 1 for p in others["params"])
    assert len(kernels["params"]) == 8 and len(others["params"]) == 8 + 14  # 6 conv + 2 dense kernels; biases, BN


class RecordWeights(L.Callback):
    """The raw weights after every optimizer step (Lightning's averaging callback runs after this one)."""

    def __init__(self):
        self.steps: list[dict[str, torch.Tensor]] = []

    def on_train_batch_end(self, trainer, pl_module, *args):
        self.steps.append({k: v.detach().clone() for k, v in pl_module.net.named_parameters()})


def test_lightnings_ema_callback_leaves_the_moving_average_of_the_weights_in_our_model(image_folder):
    """The 30-epoch recipe averages weights with Lightning's own callback: check it works on this
    module (all parameters averaged, from the step asked for)."""
    data = CIFAR10DataModule(str(image_folder), val_size=50, batch_size=25, cache_dir=None)
    record, ema = RecordWeights(), EMAWeightAveraging(decay=0.5, update_starting_at_step=2)
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[record, ema])
    model = CIFAR10Classifier()
    trainer.fit(model, datamodule=data)
    updated = [weights for step, weights in enumerate(record.steps) if ema.should_update(step_idx=step)]  # 0-based
    assert 0 < len(updated) < len(record.steps)  # start_step left the first steps out
    expected = dict(updated[0])
    for weights in updated[1:]:
        expected = {k: 0.5 * expected[k] + 0.5 * weights[k] for k in expected}
    final = dict(model.net.named_parameters())
    assert all(torch.allclose(final[k], expected[k], atol=1e-6) for k in expected)
    assert not torch.allclose(final["features.0.0.weight"], record.steps[-1]["features.0.0.weight"])


def test_fit_without_a_monitored_checkpoint_tests_its_final_weights_as_saved(image_folder, tmp_path, monkeypatch, capsys):
    """fast.yaml picks no checkpoint by a score: fit tests the final weights (with weight averaging, the
    average), and a later `test` of the saved last.ckpt gives the same accuracy."""
    monkeypatch.chdir(tmp_path)
    overlay = tmp_path / "ema.yaml"
    overlay.write_text(
        "trainer:\n  callbacks:\n"
        "    - class_path: lightning.pytorch.callbacks.ModelCheckpoint\n"
        "      init_args: {dirpath: checkpoints/fast, filename: last, enable_version_counter: false}\n"
        "    - class_path: lightning.pytorch.callbacks.EMAWeightAveraging\n"
        "      init_args: {decay: 0.5}\n"
    )
    common = ["--data.data_dir", str(image_folder), "--data.val_size", "50", "--data.batch_size", "25",
              "--data.cache_dir", "null", "--trainer.precision", "32-true", "--trainer.enable_progress_bar", "false",
              "--trainer.logger", "false"]
    run_in_process(monkeypatch, "fit", "--config", FAST, "--config", str(overlay), *common,
                   "--trainer.max_epochs", "2")
    printed = capsys.readouterr().out
    last = tmp_path / "checkpoints" / "fast" / "last.ckpt"
    assert f"Test accuracy of the final weights ({last})" in printed
    fit_accuracy = float(printed.split(f"Test accuracy of the final weights ({last}): ")[1].split()[0])
    tested = run_in_process(monkeypatch, "test", "--config", FAST, *common, "--ckpt_path", str(last))
    assert round(float(tested.trainer.callback_metrics["test/acc"]), 4) == fit_accuracy


def test_fast_recipe_on_all_images_warns_of_nothing_the_user_cannot_act_on(image_folder, tmp_path, monkeypatch, recwarn):
    """configs/fast.yaml as it runs: no validation loader (val_size 0) and weight averaging, then `test` of
    its checkpoint. Lightning's notes on both are what the recipe asked for, so they are not shown."""
    monkeypatch.chdir(tmp_path)
    common = ["--config", FAST, "--data.data_dir", str(image_folder), "--data.batch_size", "25",
              "--data.cache_dir", "null", "--trainer.precision", "32-true", "--trainer.enable_progress_bar", "false"]
    run_in_process(monkeypatch, "fit", *common, "--trainer.max_epochs", "1")
    last = tmp_path / "checkpoints" / "fast" / "last.ckpt"
    tested = run_in_process(monkeypatch, "test", *common, "--ckpt_path", str(last))
    assert 0 <= float(tested.trainer.callback_metrics["test/acc"]) <= 1
    messages = [str(warning.message) for warning in recwarn]
    assert not [m for m in messages if "WeightAveraging" in m or "across ranks is zero" in m], messages


def predicted_top_probabilities(monkeypatch, folder, ckpt: str, data_dir, *extra: str) -> list[float]:
    """The CSV's top-1 probabilities of ``predict --config fast.yaml --ckpt_path ckpt`` run in
    ``folder``, in source order."""
    folder.mkdir()
    monkeypatch.chdir(folder)
    run_in_process(monkeypatch, "predict", "--config", FAST, "--ckpt_path", ckpt, *extra,
                   "--data.data_dir", str(data_dir), "--data.cache_dir", "null", "--trainer.logger", "false",
                   "--trainer.enable_progress_bar", "false", "--trainer.precision", "32-true")
    with open(folder / "predictions" / "predictions.csv", newline="") as file:
        return [float(row["probability"]) for row in sorted(csv.DictReader(file), key=lambda row: int(row["image"]))]


def test_a_checkpoint_calibrated_with_flip_averaging_keeps_it_unless_told_otherwise(trained, tmp_path, monkeypatch):
    """``calibrate --tta_flip true`` writes the setting its temperature was fitted for; predict keeps
    it, even under a config that says otherwise, and ``--model.tta_flip false`` turns it off."""
    calibrated = tmp_path / "flip.ckpt"
    run_in_process(monkeypatch, "calibrate", "--ckpt_path", trained.ckpt, "--output", str(calibrated),
                   "--temperature", "2.0", "--tta_flip", "true")
    model = load_classifier(str(calibrated)).eval()
    assert model.hparams.tta_flip is True and model.hparams.temperature == 2.0
    assert torch.load(calibrated, weights_only=True)["calibration"]["tta_flip"] is True
    images = load_split(trained.data_dir, train=False, cache_dir=None).images
    with torch.no_grad():
        with_flip = combine_views(torch.stack([model(images), model(images.flip(-1))]), 2.0).exp().max(-1).values
        without = (model(images) / 2.0).softmax(-1).max(-1).values
    assert not torch.allclose(with_flip, without, atol=1e-4)
    no_flip_config = tmp_path / "no_flip.yaml"
    no_flip_config.write_text("model:\n  tta_flip: false\n")
    kept = predicted_top_probabilities(monkeypatch, tmp_path / "kept", str(calibrated), trained.data_dir,
                                       "--config", str(no_flip_config))
    assert kept == pytest.approx(with_flip.tolist(), abs=1e-4)
    off = predicted_top_probabilities(monkeypatch, tmp_path / "off", str(calibrated), trained.data_dir, "--model.tta_flip", "false")
    assert off == pytest.approx(without.tolist(), abs=1e-4)


def read_checkpoints(monkeypatch) -> list[str]:
    """Every checkpoint file ``torch.load`` reads from now on (the decode cache's ``.pt`` files aside)."""
    reads, real_load = [], torch.load

    def counting_load(source, *args, **kwargs):
        name = str(getattr(source, "path", None) or getattr(source, "name", None) or source)
        if not name.endswith(".pt"):
            reads.append(name)
        return real_load(source, *args, **kwargs)

    monkeypatch.setattr(torch, "load", counting_load)
    return reads


def test_test_and_calibrate_read_their_checkpoint_file_once(trained, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    reads = read_checkpoints(monkeypatch)
    run_in_process(monkeypatch, "test", "--config", FAST, "--ckpt_path", trained.ckpt,
                   "--data.data_dir", str(trained.data_dir), "--data.cache_dir", "null", "--trainer.logger", "false",
                   "--trainer.enable_progress_bar", "false")
    assert len(reads) == 1, reads  # checked, its settings taken and its weights restored from one read
    reads.clear()
    run_in_process(monkeypatch, "calibrate", "--ckpt_path", trained.ckpt, "--output", str(tmp_path / "t.ckpt"),
                   "--data_dir", str(trained.data_dir), "--val_size", "20", "--cache_dir", "null")
    assert len(reads) == 1, reads
