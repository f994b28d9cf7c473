"""benchmarks/: the throughput script's argument checks and data row, and gpu_check.sh's quick CPU mode,
so that neither rots between the runs on a GPU."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import torch

from conftest import REPO, load_benchmark, write_image_folder

GPU_CHECK = REPO / "benchmarks" / "gpu_check.sh"


throughput = load_benchmark("throughput")


def test_a_relative_data_dir_is_resolved_when_parsed(image_folder, monkeypatch):
    # The fit row changes directory later; a path taken relative to the start folder must survive that.
    monkeypatch.chdir(image_folder.parent)
    args = throughput.parse_args(["--data_dir", image_folder.name, "--config", str(REPO / "configs" / "base.yaml")])
    monkeypatch.chdir("/")
    assert args.data_dir == image_folder and args.data_dir.is_absolute()
    assert args.cache_dir.is_absolute() and args.config.is_absolute()
    assert args.device in ("cpu", "cuda") and not args.synthetic


@pytest.mark.parametrize(("argv", "message"), [
    (["--data_dir", "no/such/folder"], "no such folder"),
    (["--data_dir", "."], "holds no CIFAR-10"),
    (["--steps", "0"], "--steps: must be at least 1, got 0"),
    (["--repeats", "-2"], "--repeats: must be at least 1, got -2"),
    (["--predict_batches", "0"], "--predict_batches: must be at least 1"),
    (["--steps", "ten"], "'ten' is not a whole number"),
    (["--synthetic", "--data_dir", "."], "not both"),
    (["--synthetic", "--config", "no.yaml"], "no such file"),
    (["--synthetic", "--device", "gpu"], "invalid choice"),
    (["--synthetic", "--device", "cuda"], "no CUDA GPU"),
])
def test_bad_arguments_are_one_line_and_exit_status_2_before_any_work(argv, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as stop:
        throughput.main(argv)
    assert stop.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1, captured.err
    assert captured.err.startswith("throughput.py: error: ") and message in captured.err
    assert list(tmp_path.iterdir()) == []  # nothing written


class CountCalls:
    def __init__(self):
        self.calls = 0

    def __call__(self, module, inputs, output):
        self.calls += 1
        assert output.dtype == torch.float32  # augmented: uint8 in, float in [0, 1] out


@pytest.mark.parametrize("config", ["base.yaml", "fast.yaml"])  # Keras-style affine; random crop
def test_data_row_times_the_datamodules_own_augmentation(config, tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["throughput.py"])  # LightningCLI warns when argv and args both hold arguments
    data_dir = write_image_folder(tmp_path / "data", n_train=20, n_test=5)
    run = throughput.Run("fp32", tmp_path / "run", [
        "--config", str(REPO / "configs" / config), "--data.data_dir", str(data_dir), "--data.val_size", "40",
        "--data.batch_size", "16", "--data.cache_dir", str(tmp_path / "cache"), "--trainer.accelerator", "cpu"])
    datamodule = run.datamodule
    datamodule.setup("fit")
    counter = CountCalls()
    datamodule.augment.register_forward_hook(counter)  # the configured augmentation, as on_after_batch_transfer applies it
    rate = throughput.bench_data(run.trainer, datamodule, batches=2, repeats=1)
    assert rate > 0 and counter.calls == 2 * 2  # every batch of the warm-up pass and the timed one
    assert not run.trainer.training  # put back as found


def run_gpu_check(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run(["bash", str(GPU_CHECK), *args], capture_output=True, text=True, timeout=timeout, env=env,
                          cwd=REPO)


def test_gpu_check_refuses_bad_arguments_in_one_line(tmp_path):
    result = run_gpu_check("--max_time", "4min", "--out", str(tmp_path))
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0
    assert "--max_time 4min is not DD:HH:MM:SS" in result.stderr
    result = run_gpu_check("--fast")
    assert result.returncode == 2 and "unknown argument --fast" in result.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is here: the full check would run")
def test_gpu_check_without_a_gpu_says_to_use_quick(tmp_path):
    result = run_gpu_check("--out", str(tmp_path))
    assert result.returncode == 2 and "no CUDA GPU here; on a CPU, run it with --quick" in result.stderr


@pytest.mark.slow
def test_gpu_check_quick_mode_runs_every_step_on_the_cpu(tmp_path):
    out = tmp_path / "out"
    result = run_gpu_check("--quick", "--out", str(out))
    printed = result.stdout
    assert result.returncode == 0, printed[-4000:] + result.stderr[-2000:]
    lines = printed.splitlines()
    assert lines[0].startswith("Device: ") and re.match(r"torch \S+, lightning \S+, Python \S+", lines[1])
    assert "tests: ok" in printed and "benchmark: ok" in printed and "fit: ok" in printed
    assert "| row | fp32 images/s | bf16 images/s | bf16/fp32 |" in printed
    for row in ("raw", "fit", "predict"):
        assert re.search(rf"^\| {row} \| [\d,]+ \| ([\d,]+ \| \d+\.\d\d|- \| -) \|$", printed, re.MULTILINE), row
    assert re.search(r"^\| data \| [\d,]+ \| \| \|$", printed, re.MULTILINE)
    # The fit's epochs, read back from its TensorBoard log: seconds and val/acc per epoch.
    assert re.search(r"^\s+0\s+\d+\.\d\s+0\.\d{4}", printed, re.MULTILINE)
    assert re.search(r"^\s+1\s+\d+\.\d\s+0\.\d{4}$", printed, re.MULTILINE)
    assert "Test accuracy of the best checkpoint" in printed
    assert lines[-1].startswith("gpu_check: all steps passed in ")
    # Everything it wrote is under --out: the repository's checkpoints/ and lightning_logs/ are not its.
    assert (out / "fit" / "checkpoints" / "base" / "last.ckpt").is_file()
    assert list((out / "fit" / "lightning_logs" / "base").glob("version_*/events.out.tfevents.*"))


def test_corruption_benchmark_scores_every_corruption_and_severity(trained, tmp_path, capsys):
    import json

    benchmark = load_benchmark("corruptions")
    results = benchmark.main(["--ckpt_path", trained.ckpt, "--data_dir", str(trained.data_dir), "--split", "holdout",
                              "--val_size", "20", "--cache_dir", "none", "--out", str(tmp_path),
                              "--anchors", str(REPO / "docs" / "robustness" / "robustbench_anchors.json")])
    (result,) = results.values()
    assert list(result["corruptions"]) == list(benchmark.CORRUPTIONS) and len(result["corruptions"]) == 15
    assert all(len(accuracies) == 5 and all(0 <= a <= 1 for a in accuracies) for accuracies in result["corruptions"].values())
    every = [a for accuracies in result["corruptions"].values() for a in accuracies]
    assert result["mean"] == pytest.approx(sum(every) / 75) and result["kept"] == pytest.approx(result["mean"] / result["clean"])
    unseen = [a for name in benchmark.CORRUPTIONS if name not in benchmark.SEEN_IN_TRAINING for a in result["corruptions"][name]]
    assert len(unseen) == 50 and result["mean_unseen"] == pytest.approx(sum(unseen) / 50)
    assert result["clean"] == 1.0  # the synthetic colours are learned perfectly, and noise at severity 5 costs some
    assert min(every) < 1.0
    saved = json.loads((tmp_path / "corruptions.json").read_text())
    assert saved["evaluated_on"] == "the hold-out (data.val_size 20, data.seed 0)" and (tmp_path / "corruptions.png").is_file()
    table = (tmp_path / "corruptions.md").read_text()
    assert "| gaussian_noise | seen |" in table and "| glass_blur | unseen |" in table
    assert "| Standard (WideResNet-28-10, standard training; published, not ours; standard training (crop and flip): " \
           "every corruption unseen) | 0.9478 | 0.7346 | 77.5% |" in table
    assert saved["seen_in_training"] == list(benchmark.SEEN_IN_TRAINING)
    assert "the hold-out (data.val_size 20, data.seed 0)" in capsys.readouterr().out


def test_corruption_benchmark_refuses_a_missing_checkpoint(tmp_path):
    benchmark = load_benchmark("corruptions")
    with pytest.raises(SystemExit, match="No checkpoint file"):
        benchmark.main(["--ckpt_path", str(tmp_path / "none.ckpt"), "--data_dir", str(tmp_path)])


def test_corruption_benchmark_names_runs_last_checkpoints_by_their_folders():
    # Every run's checkpoint is last.ckpt: keyed by the stem alone, the second model replaced the first.
    benchmark = load_benchmark("corruptions")
    assert benchmark.model_names(["runs/seed1/last.ckpt", "runs/seed2/last.ckpt", "cifar10_cnn"]) == \
        ["seed1/last", "seed2/last", "cifar10_cnn"]
    assert benchmark.model_names(["a/r6.ckpt", "b/r7.ckpt"]) == ["r6", "r7"]


def test_corruption_benchmark_refuses_the_same_checkpoint_twice_before_any_work(tmp_path):
    benchmark = load_benchmark("corruptions")
    with pytest.raises(SystemExit, match="names seed1/last more than once: give each checkpoint once"):
        benchmark.main(["--ckpt_path", "seed1/last.ckpt", "seed1/last.ckpt", "--data_dir", str(tmp_path),
                        "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_the_ece_floor_is_what_calibrated_labels_measure_and_a_miscalibrated_model_exceeds_it():
    ece_floor = load_benchmark("ece_floor")
    from cifar_lightning.calibration.temperature import calibration_scores

    generator = torch.Generator().manual_seed(0)
    probs = (torch.randn(4000, 10, generator=generator) * 3).softmax(-1)
    small, large = (ece_floor.calibrated_draw_eces(probs, n, 50, generator) for n in (1000, 4000))
    assert 0 < large.mean() < small.mean()  # more images, less scatter
    # Labels drawn from the probabilities: the measured ECE is one more draw of the floor.
    calibrated = torch.multinomial(probs, 1, generator=generator).squeeze(1)
    assert calibration_scores(probs.log(), calibrated).ece < large.quantile(0.99) + 0.005
    # The same labels scored with sharpened probabilities (overconfident): clearly above the floor.
    sharpened = (probs.log() * 2).log_softmax(-1)
    assert calibration_scores(sharpened, calibrated).ece > 3 * large.quantile(0.95)


def test_bootstrap_temperatures_centre_on_the_true_temperature_and_narrow_with_more_images():
    precision = load_benchmark("temperature_precision")
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(4000, 10, generator=generator) * 4
    labels = torch.multinomial((logits / 2.0).softmax(-1), 1, generator=generator).squeeze(1)  # true T = 2
    wide = precision.bootstrap_temperatures(logits[None, :500], labels[:500], 30, generator)
    narrow = precision.bootstrap_temperatures(logits[None], labels, 30, generator)
    assert abs(narrow.mean().item() - 2.0) < 0.1
    assert narrow.std() < wide.std()


def test_holdout_maps_are_scored_out_of_fold_and_vector_scaling_finds_what_a_temperature_cannot():
    holdout = load_benchmark("holdout_reliability")
    from cifar_lightning.calibration.temperature import calibration_scores
    from cifar_lightning.model.probabilities import combine_views

    # No row is scored by a map fitted on it: each row's id rides in its logits.
    overlaps = []

    def recording_fit(view_logits, labels):
        fitted = set(view_logits[0, :, 0].long().tolist())
        return lambda logits: overlaps.append(fitted & set(logits[0, :, 0].long().tolist())) or torch.zeros(logits.shape[1:])

    ids = torch.arange(100.0)[None, :, None].expand(1, 100, 10).clone()
    holdout.out_of_fold(recording_fit, ids, torch.zeros(100, dtype=torch.long), torch.Generator().manual_seed(0))
    assert overlaps == [set(), set()]

    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 6000, 10, generator=generator) * 3  # two views of each image
    truth = combine_views(logits, 2.0)  # a model whose probabilities need T = 2
    labels = torch.multinomial(truth.exp(), 1, generator=generator).squeeze(1)
    by_temperature = holdout.out_of_fold(holdout.temperature_map, logits, labels, generator)
    assert calibration_scores(by_temperature, labels).nll < torch.nn.functional.nll_loss(truth, labels) + 0.01
    # A per-class bias, which no temperature expresses: vector scaling finds it on the other half.
    biased = (truth + torch.linspace(-1.5, 1.5, 10)).log_softmax(-1)
    labels = torch.multinomial(biased.exp(), 1, generator=generator).squeeze(1)
    by_temperature, by_vector = (holdout.out_of_fold(fit, logits, labels, generator)
                                 for fit in (holdout.temperature_map, holdout.vector_scaling_map))
    assert calibration_scores(by_vector, labels).nll < calibration_scores(by_temperature, labels).nll - 0.05
