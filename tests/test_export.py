"""``export``: the ONNX file, run by onnxruntime, gives what the PyTorch model gives; bad input is one line."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from cifar_lightning.cli import cli_main, main
from cifar_lightning.data.sources import CIFAR10_CLASSES, load_split
from cifar_lightning.infer.predict import predict_probabilities
from cifar_lightning.model.loading import load_classifier

from serving import SHIPPED_CKPT

ort = pytest.importorskip("onnxruntime", reason="the [export] extra is not installed: pip install -e '.[dev]'")
pytest.importorskip("onnxscript", reason="the [export] extra is not installed: pip install -e '.[dev]'")


def session(path) -> "ort.InferenceSession":
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def shipped_onnx(tmp_path_factory):
    """The shipped checkpoint exported once through the CLI."""
    path = tmp_path_factory.mktemp("onnx") / "cifar10_cnn.onnx"
    cli_main(["export", "--ckpt_path", str(SHIPPED_CKPT), "--output", str(path)])
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # readable by whoever serves it, as any new file
    return path


def test_export_takes_uint8_batches_of_any_size_and_matches_pytorch(shipped_onnx):
    onnx_model = session(shipped_onnx)
    (images_input,), (probabilities_output,) = onnx_model.get_inputs(), onnx_model.get_outputs()
    assert (images_input.name, images_input.type) == ("images", "tensor(uint8)")
    assert images_input.shape[1:] == [3, 32, 32] and isinstance(images_input.shape[0], str)  # dynamic N
    assert probabilities_output.name == "probabilities" and probabilities_output.shape[1] == 10
    metadata = onnx_model.get_modelmeta().custom_metadata_map
    assert json.loads(metadata["class_names"]) == list(CIFAR10_CLASSES)
    assert json.loads(metadata["tta_flip"]) is False

    model = load_classifier(SHIPPED_CKPT)
    generator = torch.Generator().manual_seed(0)
    for n in (1, 7, 64):
        images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=generator)
        (onnx_probabilities,) = onnx_model.run(None, {"images": images.numpy()})
        expected = predict_probabilities(model, images).numpy()
        assert onnx_probabilities.shape == (n, 10) and onnx_probabilities.dtype == np.float32
        np.testing.assert_allclose(onnx_probabilities.sum(axis=1), 1, atol=1e-5)
        np.testing.assert_allclose(onnx_probabilities, expected, atol=1e-5)


def test_export_folds_batchnorm_and_honours_tta_flip(tmp_path, capsys):
    path = tmp_path / "tta.onnx"
    cli_main(["export", "--ckpt_path", str(SHIPPED_CKPT), "--output", str(path), "--tta_flip", "true"])
    assert "tta_flip true" in capsys.readouterr().out
    import onnx

    graph = onnx.load(path).graph
    assert not any(node.op_type == "BatchNormalization" for node in graph.node)
    # One (log-)softmax over both views, as predict_proba computes it; ELU as ONNX's own operator.
    assert sum(node.op_type in ("Softmax", "LogSoftmax") for node in graph.node) == 1
    assert sum(node.op_type == "Elu" for node in graph.node) == 7
    onnx_model = session(path)
    assert json.loads(onnx_model.get_modelmeta().custom_metadata_map["tta_flip"]) is True
    model = load_classifier(SHIPPED_CKPT)
    model.hparams.tta_flip = True
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    (onnx_probabilities,) = onnx_model.run(None, {"images": images.numpy()})
    np.testing.assert_allclose(onnx_probabilities, predict_probabilities(model, images).numpy(), atol=1e-5)


def bad_export(capsys, *args: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(["export", *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    return err


def test_export_bad_input_is_one_line_error(tmp_path, capsys):
    output = str(tmp_path / "model.onnx")
    assert "No checkpoint file" in bad_export(capsys, "--ckpt_path", str(tmp_path / "missing.ckpt"), "--output", output)
    foreign = tmp_path / "notes.ckpt"
    foreign.write_text("not a checkpoint")
    assert "is not a PyTorch checkpoint" in bad_export(capsys, "--ckpt_path", str(foreign), "--output", output)
    assert "does not exist" in bad_export(capsys, "--ckpt_path", str(SHIPPED_CKPT),
                                         "--output", str(tmp_path / "no" / "such" / "model.onnx"))
    assert "it is a folder" in bad_export(capsys, "--ckpt_path", str(SHIPPED_CKPT), "--output", str(tmp_path))
    assert not (tmp_path / "model.onnx").exists()


@pytest.mark.slow
def test_onnx_agrees_with_pytorch_on_the_real_test_images(shipped_onnx, real_data, decode_cache):
    """All 10,000 real test images: the same top-1 class for >= 99.9% and probabilities within 1e-4."""
    images = load_split(real_data, train=False, cache_dir=decode_cache).images
    expected = predict_probabilities(load_classifier(SHIPPED_CKPT), images).numpy()
    onnx_model = session(shipped_onnx)
    got = np.concatenate([onnx_model.run(None, {"images": chunk.numpy()})[0] for chunk in images.split(1000)])
    agreement = (got.argmax(axis=1) == expected.argmax(axis=1)).mean()
    difference = np.abs(got - expected).max()
    print(f"onnxruntime vs PyTorch on {len(images)} real test images: top-1 agreement {agreement:.4%}, "
          f"largest probability difference {difference:.2e}")
    assert agreement >= 0.999
    assert difference <= 1e-4
