"""The CLI end to end on tiny synthetic data: fit writes checkpoints and TensorBoard scalars, then
test and predict load the checkpoint; the checkpoint alone rebuilds the model."""

from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cifar_lightning import CIFAR10Classifier
from cifar_lightning.cli import FUNCTION_SUBCOMMANDS, SUBCOMMANDS

from cli_runner import BASE, run_process
from conftest import write_image_folder


def tiny_overrides(data_dir: Path, tmp_path: Path) -> list[str]:
    return [
        "--data.data_dir", str(data_dir), "--data.val_size", "30", "--data.batch_size", "16",
        "--data.eval_batch_size", "64", "--data.cache_dir", str(tmp_path / "cache"),
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
    ]


@pytest.fixture(scope="module")
def fitted_run(tmp_path_factory):
    """One `fit` of two epochs on 200 synthetic images, shared by the tests below."""
    tmp_path = tmp_path_factory.mktemp("cli")
    data_dir = write_image_folder(tmp_path / "data", n_train=20, n_test=5)
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "cifar10_cnn.ckpt").write_bytes(b"the shipped model sits here in a clone")
    result = run_process("fit", "--config", BASE, *tiny_overrides(data_dir, tmp_path), "--trainer.max_epochs", "2",
                     "--trainer.enable_model_summary", "true", cwd=tmp_path)
    return tmp_path, data_dir, result


def test_fit_writes_checkpoints_and_tests_the_best_one(fitted_run):
    tmp_path, _, result = fitted_run
    checkpoints = sorted(p.name for p in (tmp_path / "checkpoints" / "base").glob("*.ckpt"))
    assert "last.ckpt" in checkpoints and any(name.startswith("epoch") for name in checkpoints)
    assert "Test accuracy of the best checkpoint" in result.stdout
    assert "test/acc" in result.stdout and "test/ece" in result.stdout and "test/nll" in result.stdout
    # The best checkpoint, the one fit keeps and tests, carries the temperature fitted on the hold-out.
    (best,) = (tmp_path / "checkpoints" / "base").glob("epoch*.ckpt")
    temperature = torch.load(best, weights_only=True)["hyper_parameters"]["temperature"]
    assert f"Temperature {temperature:.4f} fitted on the hold-out (data.val_size 30" in result.stdout + result.stderr
    assert torch.load(tmp_path / "checkpoints" / "base" / "last.ckpt", weights_only=True)["hyper_parameters"].get(
        "temperature", 1.0) == 1.0  # the resume point is not the kept model


def test_fit_logs_per_epoch_scalars_to_tensorboard(fitted_run):
    tmp_path, _, _ = fitted_run
    (log_dir,) = (tmp_path / "lightning_logs" / "base").iterdir()
    events = EventAccumulator(str(log_dir))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/acc", "val/loss", "val/acc", "test/loss", "test/acc"} <= tags
    assert any(tag.startswith("lr-") for tag in tags)
    assert len(events.Scalars("val/acc")) == 2 and len(events.Scalars("train/loss")) == 2  # once per epoch
    assert (log_dir / "config.yaml").is_file() and (log_dir / "hparams.yaml").is_file()


def test_fit_logs_its_hyperparameters_with_its_final_scores_for_the_hparams_tab(fitted_run):
    """TensorBoard's HParams tab reads a run's hparams summary and the scalars it names."""
    from tensorboard.plugins.hparams import plugin_data_pb2

    tmp_path, _, _ = fitted_run
    (log_dir,) = (tmp_path / "lightning_logs" / "base").iterdir()
    events = EventAccumulator(str(log_dir))
    events.Reload()
    content = events.PluginTagToContent("hparams")
    starts = [plugin_data_pb2.HParamsPluginData.FromString(data).session_start_info for tag, data in content.items()
              if tag == "_hparams_/session_start_info"]
    assert starts, "no hparams summary in the run's event file"
    hparams = starts[-1].hparams
    assert hparams["lr"].number_value == pytest.approx(0.0025) and hparams["val_size"].number_value == 30
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    names = {info.name.tag for info in experiment.metric_infos}
    assert {"hp/val_acc", "hp/val_ece", "hp/test_acc", "hp/test_ece"} <= names
    tags = set(events.Tags()["scalars"])
    assert {"hp/val_acc", "hp/test_acc"} <= tags
    assert 0 <= events.Scalars("hp/test_acc")[-1].value <= 1


def test_checkpoint_alone_rebuilds_the_model(fitted_run):
    tmp_path, _, _ = fitted_run
    model = CIFAR10Classifier.load_from_checkpoint(tmp_path / "checkpoints" / "base" / "last.ckpt", map_location="cpu")
    assert model.hparams.lr == 0.0025 and list(model.hparams.mean) == [0.0, 0.0, 0.0]  # the original: no normalisation
    with torch.no_grad():
        assert model.eval()(torch.zeros(2, 3, 32, 32, dtype=torch.uint8)).shape == (2, 10)


def test_test_and_predict_load_the_checkpoint(fitted_run):
    tmp_path, data_dir, _ = fitted_run
    ckpt = str(tmp_path / "checkpoints" / "base" / "last.ckpt")
    tested = run_process("test", "--config", BASE, *tiny_overrides(data_dir, tmp_path), "--ckpt_path", ckpt, cwd=tmp_path)
    assert "test/acc" in tested.stdout
    versions = sorted((tmp_path / "lightning_logs" / "base").iterdir())
    predicted = run_process("predict", "--config", BASE, *tiny_overrides(data_dir, tmp_path), "--ckpt_path", ckpt,
                        cwd=tmp_path)
    rows = (tmp_path / "predictions" / "predictions.csv").read_text().splitlines()
    assert len(rows) == 1 + 50 and rows[0].startswith("image,predicted,probability")
    assert "Wrote 50 predictions to " in predicted.stdout and "Accuracy on the 50 images" in predicted.stdout
    assert sorted((tmp_path / "lightning_logs" / "base").iterdir()) == versions  # predict logs nothing
    assert not (tmp_path / "config.yaml").exists()  # and, with no logger, saves no config into the working directory


def test_fit_without_a_logger_trains_and_writes_nothing_into_the_working_directory(tmp_path):
    """``--trainer.logger false``: base.yaml's LearningRateMonitor, which refuses to start without a
    logger, is left out, and no config.yaml lands in the working directory."""
    data_dir = write_image_folder(tmp_path / "data", n_train=10, n_test=2)
    result = run_process("fit", "--config", BASE, *tiny_overrides(data_dir, tmp_path), "--trainer.max_epochs", "1",
                         "--trainer.logger", "false", cwd=tmp_path)
    assert "Test accuracy of the best checkpoint" in result.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "checkpoints", "data"]


def test_print_config_and_help_work_without_data(tmp_path):
    printed = run_process("fit", "--config", BASE, "--print_config", cwd=tmp_path)
    assert "max_epochs: 200" in printed.stdout and "patience: 35" in printed.stdout
    assert "lr: 0.0025" in printed.stdout and "batch_size: 64" in printed.stdout
    helped = run_process("fit", "--help", cwd=tmp_path)
    assert "--data.data_dir" in helped.stdout and "--model.lr" in helped.stdout


def test_help_names_the_tool_and_every_subcommand_in_whole_sentences(tmp_path):
    helped = run_process("--help", cwd=tmp_path).stdout
    assert "Lightning Trainer command line tool" not in helped
    words = " ".join(helped.split())
    assert "usage: python -m cifar_lightning" in helped and "reimplementation of a classic Keras" in words
    for name, description in {**SUBCOMMANDS, **{k: v[2] for k, v in FUNCTION_SUBCOMMANDS.items()}}.items():
        assert description.endswith(".")
        assert f"{name} {description}" in words
    report = run_process("report", "--help", cwd=tmp_path).stdout
    assert "usage: python -m cifar_lightning report" in report
    assert "Returns" not in report and "--ckpt_path" in report


def test_a_first_run_is_quiet(fitted_run):
    """What the user cannot act on is not printed: an advert, Lightning's own deprecations, a warning
    about the shipped model sitting in checkpoints/, a FLOPs count of 0."""
    _, _, result = fitted_run
    output = result.stdout + result.stderr
    for noise in ("litlogger", "LeafSpec", "exists and is not empty", "Total Flops 0", "is not supported by the model summary"):
        assert noise not in output, noise
    assert "Total Flops" in output  # the summary is still there, with a real count
