"""Prediction from a checkpoint: the Python function, the CLI's CSV, odd image files and clear errors.

The ``trained`` fixture (conftest.py) is a model trained on synthetic images whose classes differ
in colour, so correct predictions are expected, not just well-formed output.
"""

from __future__ import annotations

import csv
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cifar_lightning.data.sources import CIFAR10_CLASSES
from cifar_lightning.decode import to_rgb32
from cifar_lightning.errors import DataSourceError
from cifar_lightning.infer.predict import predict_images
from cifar_lightning.infer.prediction_writer import COLUMNS
from cifar_lightning.model.loading import load_classifier

from cli_runner import BASE, run_in_process
from conftest import synthetic_images


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as file:
        reader = csv.DictReader(file)
        assert reader.fieldnames == COLUMNS
        return list(reader)


def test_model_learned_the_synthetic_classes(trained):
    assert trained.test_acc >= 0.95


def test_predict_images_takes_paths_pil_and_tensors(trained, tmp_path):
    model = load_classifier(trained.ckpt)
    files = sorted((trained.data_dir / "test").rglob("*.png"))
    truth = [path.parent.name for path in files]
    from_paths = predict_images(model, files, batch_size=16)
    assert sum(p.class_name == t for p, t in zip(from_paths, truth)) >= 0.9 * len(files)

    pil = [Image.open(path) for path in files[:8]]
    uint8 = torch.stack([torch.from_numpy(np.array(image)).permute(2, 0, 1) for image in pil])
    for other in (predict_images(model, pil), predict_images(model, uint8), predict_images(model, uint8 / 255.0)):
        assert [p.class_name for p in other] == [p.class_name for p in from_paths[:8]]
        assert [p.probability for p in other] == pytest.approx([p.probability for p in from_paths[:8]], abs=1e-4)

    first = from_paths[0]
    assert first.probability == max(first.probabilities.values())
    assert sum(first.probabilities.values()) == pytest.approx(1, abs=1e-4)
    assert [name for name, _ in first.top(3)][0] == first.class_name and len(first.top(3)) == 3
    assert not model.training
    (tmp_path / "broken.png").write_bytes(b"not an image")
    with pytest.raises(DataSourceError, match="broken.png is not a readable image"):
        predict_images(model, [files[0], tmp_path / "broken.png"])


def test_cli_predicts_the_test_split_to_csv(trained, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    run_in_process(monkeypatch, "predict", "--config", BASE, "--ckpt_path", trained.ckpt,
            "--data.data_dir", str(trained.data_dir), "--data.cache_dir", "null", "--trainer.logger", "false",
            "--trainer.enable_progress_bar", "false")
    rows = read_csv(tmp_path / "predictions" / "predictions.csv")
    assert len(rows) == 50
    assert sorted(int(row["image"]) for row in rows) == list(range(50))  # every test image once, by source index
    assert all(row["true_class"] == CIFAR10_CLASSES[int(row["image"]) // 5] for row in rows)
    assert len({row["true_class"] for row in rows[:10]}) >= 5  # in a fixed random order, not class by class
    accuracy = sum(row["correct"] == "1" for row in rows) / len(rows)
    assert accuracy == pytest.approx(trained.test_acc)  # predict and test agree on the same checkpoint
    probabilities = [float(row[key]) for row in rows for key in ("probability", "top2_probability", "top3_probability")]
    assert all(0 <= p <= 1 for p in probabilities)
    out = capsys.readouterr().out
    assert "predictions.csv" in out and f"{accuracy:.4f}" in out


def write_odd_images(folder: Path) -> dict[str, str]:
    """Images of every awkward kind, named by the class whose colour they carry ('' = no class to expect)."""
    images, _ = synthetic_images(1, seed=5)
    colour = lambda label, size: Image.fromarray(images[label]).resize(size, Image.Resampling.NEAREST)  # noqa: E731
    (folder / "cat").mkdir(parents=True)
    (folder / "nested" / "deeper").mkdir(parents=True)
    colour(3, (32, 32)).save(folder / "cat" / "labelled.png")
    colour(1, (120, 70)).save(folder / "big.jpg", quality=95)
    colour(8, (9, 13)).convert("RGBA").save(folder / "nested" / "small_rgba.png")
    colour(9, (40, 40)).convert("P").save(folder / "nested" / "deeper" / "palette.gif")
    colour(5, (64, 64)).save(folder / "nested" / "photo.webp")
    Image.fromarray(images[0]).convert("L").save(folder / "gray.png")
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 10)
    (folder / "notes.txt").write_text("not an image")
    return {"cat/labelled.png": "cat", "big.jpg": "automobile", "nested/small_rgba.png": "ship",
            "nested/deeper/palette.gif": "truck", "nested/photo.webp": "dog", "gray.png": ""}


def test_cli_predicts_a_folder_of_odd_images(trained, tmp_path, monkeypatch, capsys):
    folder = tmp_path / "mine"
    expected = write_odd_images(folder)
    monkeypatch.chdir(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_in_process(monkeypatch, "predict", "--ckpt_path", trained.ckpt, "--data.predict_dir", str(folder),
                "--trainer.enable_progress_bar", "false")
    assert not [w for w in caught if "corrupt.png" in str(w.message)]  # reported once, in the summary
    csv_rows = read_csv(tmp_path / "predictions" / "predictions.csv")
    rows = {Path(row["image"]).relative_to(folder).as_posix(): row for row in csv_rows}
    assert set(rows) == set(expected)
    for name, cls in expected.items():
        if cls:
            assert rows[name]["predicted"] == cls, name
    assert rows["cat/labelled.png"]["true_class"] == "cat" and rows["cat/labelled.png"]["correct"] == "1"
    assert rows["big.jpg"]["true_class"] == "" and rows["big.jpg"]["correct"] == ""
    captured = capsys.readouterr()
    out = captured.out
    assert "Skipped 2 file(s)" in out and "notes.txt" in out
    assert (out + captured.err).count("corrupt.png") == 1
    assert "Accuracy on the 1 images" in out
    assert out.splitlines()[-5].startswith("Wrote 6 predictions to ")  # its own line, after the progress bar
    assert not (tmp_path / "lightning_logs").exists()  # predict logs nothing, so leaves no empty version folder


def test_predict_images_takes_a_list_of_image_tensors(trained):
    model = load_classifier(trained.ckpt)
    files = sorted((trained.data_dir / "test").rglob("*.png"))[:6]
    from_paths = [p.class_name for p in predict_images(model, files)]
    tensors = [torch.from_numpy(np.array(Image.open(path))).permute(2, 0, 1) for path in files]
    assert [p.class_name for p in predict_images(model, tensors)] == from_paths
    mixed = [tensors[0], tensors[1].float() / 255, files[2]]  # uint8, float and a path together
    assert [p.class_name for p in predict_images(model, mixed)] == from_paths[:3]
    big = torch.nn.functional.interpolate(tensors[0][None].float(), size=(64, 48))[0] / 255  # resized like a file
    assert predict_images(model, [big])[0].class_name == from_paths[0]


def test_a_tensor_of_another_size_is_resized_as_its_file_would_be(tmp_path):
    """One resize for files, Pillow images and tensors: a (3, H, W) tensor gives the pixels its PNG gives."""
    from cifar_lightning.decode import read_image
    from cifar_lightning.infer.predict import to_batch

    pixels = torch.randint(0, 256, (3, 61, 45), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    Image.fromarray(pixels.permute(1, 2, 0).numpy()).save(tmp_path / "photo.png")
    from_file = read_image(tmp_path / "photo.png")
    assert torch.equal(to_batch(pixels)[0], from_file) and torch.equal(to_batch([pixels])[0], from_file)
    assert torch.equal(to_batch(pixels.float() / 255)[0], from_file)  # floats rounded to 8 bits first, like the file
    assert to_batch(pixels).dtype == torch.uint8


def test_to_rgb32_handles_modes_and_sizes():
    transparent = Image.new("RGBA", (50, 20), (10, 200, 30, 0))
    assert to_rgb32(transparent).getpixel((0, 0)) == (255, 255, 255)  # transparency on white, not the hidden colour
    assert to_rgb32(Image.new("L", (7, 300), 90)).getpixel((5, 5)) == (90, 90, 90)
    assert to_rgb32(Image.new("I;16", (33, 33))).size == (32, 32)
