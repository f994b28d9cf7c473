"""Knowledge distillation: a teacher checkpoint's predictions of every training image ride with the
batches (``training.distillation.Distillation``), and the loss blends them with the labels
(``CIFAR10Classifier(distill_weight=...)``)."""

from __future__ import annotations

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback

from cifar_lightning.data.augment import BatchRandomCrop, ViewPairs
from cifar_lightning.data.datamodule import CIFAR10DataModule
from cifar_lightning.errors import ConfigError
from cifar_lightning.model.classifier import CIFAR10Classifier, distillation_loss
from cifar_lightning.model.loading import load_classifier
from cifar_lightning.training.distillation import Distillation, teacher_log_probs

from cli_runner import BASE, run_failing, run_in_process


def test_distillation_loss_is_the_softened_divergence_times_the_temperature_squared():
    torch.manual_seed(0)
    student, teacher_logits = torch.randn(6, 10), 3 * torch.randn(6, 10)
    teacher = teacher_logits.log_softmax(dim=1)
    t = 4.0
    p, q = (teacher_logits / t).softmax(dim=1), (student / t).softmax(dim=1)
    expected = (p * (p.log() - q.log())).sum(dim=1).mean() * t * t
    assert distillation_loss(student, teacher, t).item() == pytest.approx(expected.item(), rel=1e-5)
    # A student that already predicts the teacher's distribution has nothing left to learn from it.
    assert distillation_loss(teacher_logits, teacher, t).item() == pytest.approx(0.0, abs=1e-6)


def test_the_training_loss_blends_the_labels_and_the_teacher():
    torch.manual_seed(0)
    model = CIFAR10Classifier(distill_weight=0.3, distill_temperature=2.0, label_smoothing=0.05,
                              conv_dropout=(0.0, 0.0, 0.0), dense_dropout=0.0)
    images, labels = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8), torch.tensor([0, 1, 2, 3])
    teacher = torch.randn(4, 10).log_softmax(dim=1)
    loss = model.training_step((images, labels, teacher), 0)["loss"]
    logits = model(images)
    expected = 0.7 * F.cross_entropy(logits, labels, label_smoothing=0.05) + 0.3 * distillation_loss(logits, teacher, 2.0)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_a_distill_weight_without_a_teacher_is_a_clear_error():
    model = CIFAR10Classifier(distill_weight=0.5)
    batch = (torch.zeros(2, 3, 32, 32, dtype=torch.uint8), torch.tensor([0, 1]))
    with pytest.raises(ConfigError, match="add the callback cifar_lightning.training.distillation.Distillation"):
        model.training_step(batch, 0)


@pytest.mark.parametrize(("settings", "message"), [
    ({"distill_weight": 1.5}, "distill_weight must be in \\[0, 1\\]"),
    ({"distill_temperature": 0.0}, "distill_temperature must be a finite number greater than 0"),
])
def test_distillation_settings_are_checked(settings, message):
    with pytest.raises(ConfigError, match=message):
        CIFAR10Classifier(**settings)


def test_view_pairs_give_both_views_the_targets_of_their_image():
    data = CIFAR10DataModule(augment=ViewPairs(heavy=BatchRandomCrop(), light=BatchRandomCrop()))
    data.trainer = type("Training", (), {"training": True})()
    images, labels, targets = torch.zeros(3, 3, 32, 32, dtype=torch.uint8), torch.arange(3), torch.randn(3, 10)
    out_images, out_labels, out_targets = data.on_after_batch_transfer((images, labels, targets), 0)
    assert out_images.shape[0] == 6 and out_labels.tolist() == [0, 1, 2, 0, 1, 2]
    assert torch.equal(out_targets, torch.cat([targets, targets]))


class RecordBatches(Callback):
    def __init__(self):
        self.batches = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.batches.append([t.clone() for t in batch])


def fit_student(trained, val_size: int, callbacks, distill_weight: float = 0.5):
    data = CIFAR10DataModule(str(trained.data_dir), batch_size=16, eval_batch_size=100, val_size=val_size,
                             augment=None, cache_dir=None)
    trainer = L.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1, accelerator="cpu", logger=False,
                        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                        callbacks=callbacks)
    trainer.fit(CIFAR10Classifier(distill_weight=distill_weight), datamodule=data)
    return data


def test_fit_gives_every_training_batch_the_teachers_predictions_of_its_images(trained):
    recorder = RecordBatches()
    data = fit_student(trained, 20, [Distillation(trained.ckpt, batch_size=64), recorder])  # the teacher's hold-out
    teacher = load_classifier(trained.ckpt)
    assert len(recorder.batches) == 2
    for images, labels, targets in recorder.batches:
        with torch.no_grad():
            expected = teacher.predict_log_proba(images, teacher.inference_net(), temperature=1.0)
        torch.testing.assert_close(targets, expected, rtol=1e-4, atol=1e-4)
        assert torch.allclose(targets.logsumexp(dim=1), torch.zeros(len(labels)), atol=1e-5)
    assert data.train_set.targets.shape == (len(data.train_set), 10)
    # The tiny teacher was trained to tell these classes apart, so its targets say the labels.
    assert (teacher_log_probs(teacher, data.train_set.images).argmax(1) == data.train_set.labels).float().mean() > 0.9


def test_a_teacher_that_trained_on_this_runs_hold_out_is_refused(trained):
    with pytest.raises(ConfigError, match="held out data.val_size 20 with data.seed 0, this run val_size 40"):
        fit_student(trained, 40, [Distillation(trained.ckpt)])


def test_a_teacher_without_a_distill_weight_is_refused(trained):
    with pytest.raises(ConfigError, match="model.distill_weight is 0"):
        fit_student(trained, 20, [Distillation(trained.ckpt)], distill_weight=0.0)


def test_the_cli_distils_from_a_config_and_refuses_a_teacher_that_saw_the_hold_out(trained, tmp_path, monkeypatch,
                                                                                   capsys):
    config = tmp_path / "distil.yaml"
    config.write_text(f"""\
trainer:
  callbacks:
    - class_path: cifar_lightning.training.distillation.Distillation
      init_args:
        teacher: {trained.ckpt}
model:
  distill_weight: 0.5
""")
    args = ["fit", "--config", BASE, "--config", str(config), "--data.data_dir", str(trained.data_dir),
            "--data.cache_dir", str(tmp_path / "cache"), "--data.batch_size", "16", "--trainer.max_epochs", "1",
            "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1", "--trainer.limit_test_batches", "1",
            "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false", "--trainer.default_root_dir", str(tmp_path)]
    monkeypatch.chdir(tmp_path)
    cli = run_in_process(monkeypatch, *args, "--data.val_size", "20")
    assert cli.model.hparams.distill_weight == 0.5
    assert cli.datamodule.train_set.targets.shape == (len(cli.datamodule.train_set), 10)
    err = run_failing([*args, "--data.val_size", "40"], capsys)
    assert "held out data.val_size 20 with data.seed 0" in err and "Train the teacher with this run's" in err
