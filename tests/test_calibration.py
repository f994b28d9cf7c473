"""Temperature scaling: the fit recovers a known temperature, ECE is torchmetrics', a checkpoint
without a temperature predicts as before, fit and calibrate write the temperature into the
checkpoint, and calibration never reads the test split."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torchmetrics.functional.classification import multiclass_calibration_error

from cifar_lightning.calibration.checkpoint_file import write_temperature
from cifar_lightning.calibration.reliability import reliability_bins
from cifar_lightning.calibration.temperature import calibration_scores, fit_temperature
from cifar_lightning.infer.predict import predict_probabilities
from cifar_lightning.model.classifier import CIFAR10Classifier
from cifar_lightning.model.loading import load_classifier
from cifar_lightning.model.probabilities import combine_views

from cli_runner import BASE, FAST, run_failing, run_in_process, run_process
from conftest import write_image_folder


def sampled_logits(temperature: float, n: int = 20000, views: int = 1, seed: int = 0):
    """Logits whose labels are drawn from ``combine_views(logits, temperature)``: the NLL-optimal
    temperature of these logits is ``temperature`` (up to sampling noise)."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(views, n, 10, generator=generator) * 4
    labels = torch.multinomial(combine_views(logits, temperature).exp(), 1, generator=generator).squeeze(1)
    return logits, labels


@pytest.mark.parametrize("true_temperature", [0.5, 1.0, 2.5])
@pytest.mark.parametrize("views", [1, 2])
def test_fit_recovers_a_known_temperature(true_temperature, views):
    logits, labels = sampled_logits(true_temperature, views=views)
    assert fit_temperature(logits, labels) == pytest.approx(true_temperature, rel=0.05)


def test_temperature_fixes_calibration_on_fresh_images_and_never_changes_the_class():
    held_out, held_labels = sampled_logits(2.0, seed=1)
    fresh, fresh_labels = sampled_logits(2.0, seed=2)
    temperature = fit_temperature(held_out, held_labels)
    before = calibration_scores(combine_views(fresh, 1.0), fresh_labels)
    after = calibration_scores(combine_views(fresh, temperature), fresh_labels)
    assert before.ece > 0.1 and after.ece < 0.015  # overconfident by design, then calibrated
    assert after.nll < before.nll and after.accuracy == before.accuracy


def test_ece_is_torchmetrics_and_the_bins_sum_to_it():
    logits, labels = sampled_logits(1.7, n=5000)
    log_probs = combine_views(logits, 1.0)
    expected = multiclass_calibration_error(log_probs.exp(), labels, num_classes=10, n_bins=15, norm="l1").item()
    assert calibration_scores(log_probs, labels).ece == pytest.approx(expected, abs=1e-6)
    bins = reliability_bins(log_probs.exp(), labels)
    assert bins.ece == pytest.approx(expected, abs=1e-5)
    assert int(bins.counts.sum()) == 5000 and len(bins.counts) == 15


def test_combine_views_is_the_mean_of_the_views_probabilities():
    logits = torch.randn(2, 5, 10)
    expected = ((logits[0] / 0.7).softmax(-1) + (logits[1] / 0.7).softmax(-1)) / 2
    torch.testing.assert_close(combine_views(logits, 0.7).exp(), expected)
    torch.testing.assert_close(combine_views(logits[:1], 0.7), F.log_softmax(logits[0] / 0.7, dim=-1))


def test_a_checkpoint_without_a_temperature_predicts_as_before(trained, tmp_path):
    """Checkpoints written before temperatures existed load with 1.0: plain softmax of the logits."""
    old = torch.load(trained.ckpt, weights_only=True)
    old["hyper_parameters"].pop("temperature", None)
    torch.save(old, tmp_path / "old.ckpt")
    model = load_classifier(tmp_path / "old.ckpt")
    assert model.hparams.temperature == 1.0
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(images).softmax(dim=-1)
    torch.testing.assert_close(predict_probabilities(model, images), expected, atol=1e-5, rtol=0)


def test_the_temperature_divides_every_probability_and_survives_the_checkpoint(trained, tmp_path):
    write_temperature(torch.load(trained.ckpt, map_location="cpu", weights_only=True), tmp_path / "warm.ckpt", 0.5)
    model = CIFAR10Classifier.load_from_checkpoint(tmp_path / "warm.ckpt", map_location="cpu").eval()
    assert model.hparams.temperature == 0.5
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = (model(images) / 0.5).softmax(dim=-1)
    torch.testing.assert_close(predict_probabilities(model, images), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(predict_probabilities(model, images, temperature=1.0),
                               predict_probabilities(load_classifier(trained.ckpt), images), atol=1e-6, rtol=0)


def test_a_temperature_must_be_positive_and_finite():
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="temperature must be a finite number greater than 0"):
            CIFAR10Classifier(temperature=bad)


@pytest.fixture
def unreadable_test_split(tmp_path) -> Path:
    """CIFAR-10 image folders whose test images are not images: reading the test split fails."""
    root = write_image_folder(tmp_path / "cifar10", n_train=20, n_test=1)
    for path in (root / "test").rglob("*.png"):
        path.write_bytes(b"not a PNG")
    return root


def test_calibrate_fits_on_the_hold_out_and_never_reads_the_test_split(trained, unreadable_test_split, tmp_path,
                                                                        monkeypatch, capsys):
    output = tmp_path / "calibrated.ckpt"
    run_in_process(monkeypatch, "calibrate", "--ckpt_path", trained.ckpt, "--output", str(output),
                   "--fit_config", BASE, "--data_dir", str(unreadable_test_split), "--val_size", "20",
                   "--cache_dir", str(tmp_path / "cache"))
    printed = capsys.readouterr().out
    # The checkpoint held out 20 (its data settings are in it), so the same 20 are asked for.
    assert "fitted on the hold-out of the training split (data.val_size 20, data.seed 0) (20 images)" in printed
    checkpoint = torch.load(output, weights_only=True)
    temperature = checkpoint["hyper_parameters"]["temperature"]
    assert temperature != 1.0 and checkpoint["calibration"]["temperature"] == temperature
    assert checkpoint["calibration"]["nll_after"] <= checkpoint["calibration"]["nll_before"]
    assert f"Temperature {temperature:.4f}" in printed and f"Wrote {output}" in printed
    original = torch.load(trained.ckpt, weights_only=True)
    assert all(torch.equal(original["state_dict"][k], v) for k, v in checkpoint["state_dict"].items())
    assert load_classifier(output).hparams.temperature == temperature
    # The same folder breaks anything that reads the test split: this is the control that the test could fail.
    from cifar_lightning.data.sources import load_split
    from cifar_lightning.errors import DataSourceError
    with pytest.raises(DataSourceError):
        load_split(unreadable_test_split, train=False, cache_dir=None)


def test_calibrate_on_a_folder_of_labelled_images(trained, tmp_path, monkeypatch, capsys):
    folder = tmp_path / "labelled"
    for i, path in enumerate(sorted((Path(trained.data_dir) / "test").rglob("*.png"))):
        (folder / path.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, folder / path.parent.name / f"{i}.png")
    output = tmp_path / "calibrated.ckpt"
    run_in_process(monkeypatch, "calibrate", "--ckpt_path", trained.ckpt, "--output", str(output),
                   "--image_dir", str(folder))
    assert "fitted on 50 labelled images of labelled/" in capsys.readouterr().out
    assert torch.load(output, weights_only=True)["hyper_parameters"]["temperature"] > 0


def test_calibrate_with_a_given_temperature_and_its_refusals(trained, tmp_path, monkeypatch, capsys):
    output = tmp_path / "given.ckpt"
    run_in_process(monkeypatch, "calibrate", "--ckpt_path", trained.ckpt, "--output", str(output),
                   "--temperature", "0.75")
    assert load_classifier(output).hparams.temperature == 0.75
    refused = [
        ["--output", trained.ckpt, "--temperature", "0.8"],  # the input itself
        ["--output", str(tmp_path / "x.ckpt"), "--temperature", "0"],
        ["--output", str(tmp_path / "x.ckpt"), "--temperature", "0.8", "--val_size", "10"],
        ["--output", str(tmp_path / "x.ckpt"), "--image_dir", str(tmp_path), "--val_size", "10"],
        ["--output", str(tmp_path / "x.ckpt"), "--val_size", "0", "--data_dir", str(trained.data_dir)],
        ["--output", str(tmp_path / "no" / "x.ckpt"), "--temperature", "0.8"],
    ]
    for extra in refused:
        err = run_failing(["calibrate", "--ckpt_path", trained.ckpt, *extra], capsys)
        assert err.startswith("error: ") and err.count("\n") == 1, err
    assert not (tmp_path / "x.ckpt").exists()
    assert "as --fit_config" in run_failing(["calibrate", "--ckpt_path", trained.ckpt, "--output", str(output),
                                             "--config", BASE], capsys)
    assert "--overwrite true" in run_failing(["calibrate", "--ckpt_path", trained.ckpt, "--output", trained.ckpt,
                                              "--temperature", "0.8"], capsys)


@pytest.fixture(scope="module")
def fitted_with_holdout(tmp_path_factory):
    """configs/fast.yaml for one short epoch with 50 images held out (a real process): fit ends by
    fitting the temperature on them, writing it into the final checkpoint and testing it."""
    tmp_path = tmp_path_factory.mktemp("fit_calibrated")
    data_dir = write_image_folder(tmp_path / "data", n_train=20, n_test=2)
    result = run_process("fit", "--config", FAST, "--data.data_dir", str(data_dir), "--data.val_size", "50",
                         "--data.cache_dir", str(tmp_path / "cache"), "--data.batch_size", "16",
                         "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false",
                         "--trainer.enable_model_summary", "false", cwd=tmp_path)
    return tmp_path, data_dir, result


def test_fit_fits_the_temperature_on_its_hold_out_and_tests_with_it(fitted_with_holdout):
    tmp_path, _, result = fitted_with_holdout
    output = result.stdout + result.stderr
    assert "fitted on the hold-out (data.val_size 50, data.seed 0) (50 images): ECE" in output
    checkpoint = torch.load(tmp_path / "checkpoints" / "fast" / "last.ckpt", weights_only=True)
    temperature = checkpoint["hyper_parameters"]["temperature"]
    assert temperature != 1.0 and checkpoint["calibration"]["images"] == 50
    assert f"Temperature {temperature:.4f}" in output
    assert "test/ece" in output and "test/nll" in output
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    (log_dir,) = (tmp_path / "lightning_logs" / "fast").iterdir()
    events = EventAccumulator(str(log_dir)).Reload()
    assert {"val/ece", "val/nll", "test/ece", "test/nll"} <= set(events.Tags()["scalars"])
    assert {"val/reliability", "test/reliability"} <= set(events.Tags()["images"])


def test_calibrate_takes_the_hold_out_from_the_fit_config(fitted_with_holdout, monkeypatch, capsys):
    tmp_path, data_dir, _ = fitted_with_holdout
    config = tmp_path / "holdout.yaml"
    config.write_text(f"data:\n  data_dir: {data_dir}\n  val_size: 50\n  cache_dir: {tmp_path / 'cache'}\n")
    run_in_process(monkeypatch, "calibrate", "--ckpt_path", str(tmp_path / "checkpoints" / "fast" / "last.ckpt"),
                   "--fit_config", str(config), "--output", str(tmp_path / "again.ckpt"))
    assert "(data.val_size 50, data.seed 0) (50 images)" in capsys.readouterr().out


def test_calibrate_refuses_a_hold_out_the_checkpoint_trained_on(fitted_with_holdout, capsys):
    tmp_path, data_dir, _ = fitted_with_holdout
    ckpt = str(tmp_path / "checkpoints" / "fast" / "last.ckpt")
    err = run_failing(["calibrate", "--ckpt_path", ckpt, "--output", str(tmp_path / "x.ckpt"),
                       "--data_dir", str(data_dir), "--val_size", "20"], capsys)
    assert "held out data.val_size 50 with data.seed 0" in err and "--val_size 50 --seed 0" in err



@pytest.mark.slow
def test_one_path_csv_python_service_and_onnx_give_the_same_probabilities(tmp_path, monkeypatch):
    """The same image files through the predict CLI's CSV, predict_images, the HTTP service (a real
    server) and the exported ONNX file (onnxruntime): the same probabilities to 1e-5, temperature
    included (a checkpoint with temperature 0.6, so a path that left it out would differ)."""
    import csv

    import numpy as np
    from PIL import Image

    from cifar_lightning.decode import read_image
    from cifar_lightning.infer.predict import predict_images

    from conftest import synthetic_images
    from serving import SHIPPED_CKPT, running_server

    ort = pytest.importorskip("onnxruntime", reason="the [export] extra is not installed: pip install -e '.[dev]'")
    pytest.importorskip("litserve", reason="the [serve] extra is not installed: pip install -e '.[dev]'")
    ckpt = tmp_path / "warm.ckpt"
    run_in_process(monkeypatch, "calibrate", "--ckpt_path", str(SHIPPED_CKPT), "--output", str(ckpt),
                   "--temperature", "0.6")
    folder = tmp_path / "photos"
    folder.mkdir()
    images, _ = synthetic_images(1, seed=3)
    for i, image in enumerate(images[:4]):
        Image.fromarray(image).resize((48 + 8 * i, 40), Image.Resampling.BILINEAR).save(folder / f"{i}.png")
    Image.fromarray(images[4]).save(folder / "4.jpg", quality=80)
    files = sorted(folder.iterdir())

    model = load_classifier(ckpt)
    python = {f.name: p.probabilities for f, p in zip(files, predict_images(model, files))}
    assert max(python["0.png"].values()) != pytest.approx(
        max(predict_images(load_classifier(SHIPPED_CKPT), [files[0]])[0].probabilities.values()), abs=1e-3)

    monkeypatch.chdir(tmp_path)
    run_in_process(monkeypatch, "predict", "--config", BASE, "--ckpt_path", str(ckpt), "--data.predict_dir",
                   str(folder), "--trainer.enable_progress_bar", "false", "--trainer.precision", "32-true")
    with open(tmp_path / "predictions" / "predictions.csv", newline="") as file:
        for row in csv.DictReader(file):
            expected = python[Path(row["image"]).name]
            for name_key, prob_key in (("predicted", "probability"), ("top2", "top2_probability"),
                                       ("top3", "top3_probability")):
                assert float(row[prob_key]) == pytest.approx(expected[row[name_key]], abs=1e-5)

    with running_server(ckpt, tmp_path / "serve.log") as server:
        client = server.client()
        for path in files:
            answer = client.predict(path.name, path.read_bytes())
            assert answer.status == 200, answer.body
            for entry in answer.json()["predictions"]:
                assert entry["probability"] == pytest.approx(python[path.name][entry["class"]], abs=1e-5)

    onnx_path = tmp_path / "warm.onnx"
    run_in_process(monkeypatch, "export", "--ckpt_path", str(ckpt), "--output", str(onnx_path))
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    batch = torch.stack([read_image(path) for path in files]).numpy()
    (onnx_probabilities,) = session.run(None, {"images": batch})
    expected = np.array([[python[path.name][name] for name in model.class_names] for path in files])
    np.testing.assert_allclose(onnx_probabilities, expected, atol=1e-5)
