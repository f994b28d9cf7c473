"""``python -m cifar_lightning export``: a checkpoint as one ONNX file that takes what the checkpoint takes.

The graph's input is ``images``, uint8 ``(N, 3, 32, 32)`` with any ``N``; its output is
``probabilities``, float32 ``(N, num_classes)``. Everything between is inside the graph: scaling to
[0, 1], the checkpoint's normalisation, the network with BatchNorm folded into the layers before
it, and the softmax. With ``tta_flip`` (taken from the checkpoint unless given) it also averages the
probabilities of each image and its mirror image, as ``predict`` does. The class names and the
other facts a user needs are in the model's ``metadata_props``::

    import json, onnxruntime as ort
    session = ort.InferenceSession("model.onnx")
    meta = session.get_modelmeta().custom_metadata_map
    classes = json.loads(meta["class_names"])
    probabilities = session.run(None, {"images": uint8_images})[0]

Made with ``torch.onnx.export(..., dynamo=True)`` (TorchScript export is deprecated).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from torch import Tensor, nn

from cifar_lightning.augment import to_unit_float
from cifar_lightning.checkpoints import load_classifier
from cifar_lightning.errors import UserInputError
from cifar_lightning.module import CIFAR10Classifier
from cifar_lightning.network import ExpELU, fold_batchnorm
from cifar_lightning.sources import IMAGE_SIZE

INPUT_NAME = "images"
OUTPUT_NAME = "probabilities"


class ExportError(UserInputError):
    """The ONNX file cannot be written where asked."""


class ProbabilitiesModel(nn.Module):
    """uint8 images (N, 3, 32, 32) -> class probabilities (N, C): the whole of ``predict`` as one module.

    ``ExpELU`` (a CPU-speed trick built on a custom autograd function) becomes ``nn.ELU``, the same
    function, which ONNX has as one operator.
    """

    def __init__(self, model: CIFAR10Classifier, tta_flip: bool) -> None:
        super().__init__()
        net = fold_batchnorm(model.net).to(memory_format=torch.contiguous_format)
        for name, module in list(net.named_modules()):
            if isinstance(module, ExpELU):
                parent, _, child = name.rpartition(".")
                setattr(net.get_submodule(parent) if parent else net, child, nn.ELU())
        self.net = net.eval()
        self.register_buffer("mean", model.mean.detach().float().cpu().clone())
        self.register_buffer("std", model.std.detach().float().cpu().clone())
        self.tta_flip = tta_flip

    def forward(self, images: Tensor) -> Tensor:
        x = (to_unit_float(images) - self.mean) / self.std
        if not self.tta_flip:
            return self.net(x).softmax(dim=-1)
        n = x.shape[0]  # slices, not chunk(2): chunk would fix the exported batch size
        both = self.net(torch.cat([x, x.flip(-1)])).softmax(dim=-1)
        return (both[:n] + both[n:]) / 2


def check_output_path(output: str | os.PathLike) -> Path:
    """The output path, resolved, if a file can be written there; else ``ExportError`` saying why."""
    path = Path(output).expanduser()
    if path.is_dir():
        raise ExportError(f"Cannot write the ONNX file to {path.resolve()}: it is a folder. Pass a file name, "
                          "e.g. --output model.onnx.")
    folder = path.parent
    if not folder.is_dir():
        raise ExportError(f"Cannot write the ONNX file to {path.resolve()}: the folder {folder.resolve()} does "
                          "not exist. Create it or pass another --output.")
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as error:
        raise ExportError(f"Cannot write the ONNX file to {path.resolve()} ({error.strerror or error}). "
                          "Pass an --output in a folder you can write to.") from None
    return path


def to_onnx_program(model: CIFAR10Classifier, tta_flip: bool | None = None):
    """The ``torch.onnx.ONNXProgram`` of ``ProbabilitiesModel``, with a dynamic batch dimension and metadata."""
    tta = bool(model.hparams.tta_flip if tta_flip is None else tta_flip)
    module = ProbabilitiesModel(model, tta).eval()
    example = torch.zeros(2, 3, IMAGE_SIZE, IMAGE_SIZE, dtype=torch.uint8)
    with torch.inference_mode(False), torch.no_grad():
        program = torch.onnx.export(
            module, (example,), dynamo=True, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_shapes={"images": {0: torch.export.Dim("batch", min=1)}}, verbose=False,
        )
    batch_dim = program.model.graph.inputs[0].shape[0]
    if isinstance(batch_dim, int):  # the exporter can fall back to fixed shapes rather than fail
        raise RuntimeError(f"The exported graph takes a fixed batch of {batch_dim} images, not any number.")
    program.model.metadata_props.update({
        "class_names": json.dumps(list(model.class_names)),
        "input": f"{INPUT_NAME}: uint8 (N, 3, {IMAGE_SIZE}, {IMAGE_SIZE}), RGB, values 0-255",
        "output": f"{OUTPUT_NAME}: float32 (N, {len(model.class_names)}), softmax, class order as class_names",
        "tta_flip": json.dumps(tta),
        "producer": "cifar_lightning export",
    })
    return program


def export_onnx(ckpt_path: str, output: str = "model.onnx", tta_flip: bool | None = None) -> Path:
    """Write a checkpoint as an ONNX file: uint8 images (N, 3, 32, 32) in, class probabilities out.

    Scaling, normalisation, the network (BatchNorm folded) and softmax are inside the graph; the class
    names are in its metadata (``class_names``, a JSON list). Check it with onnxruntime (docs/deploy.md).

    Args:
        ckpt_path: A checkpoint written by ``fit``, e.g. checkpoints/cifar10_cnn.ckpt.
        output: Where to write the .onnx file (replaced if it exists; written whole or not at all).
        tta_flip: Average each image's probabilities with its mirror image's, as predict does with
            --model.tta_flip true; the default takes the checkpoint's setting.
    """
    path = check_output_path(output)
    model = load_classifier(ckpt_path)
    program = to_onnx_program(model, tta_flip)
    handle, partial = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    os.close(handle)
    try:
        program.save(partial, external_data=False)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(partial, 0o666 & ~umask)  # mkstemp made it private (0600); a model file is for everyone
        os.replace(partial, path)
    except OSError as error:
        raise ExportError(f"Cannot write the ONNX file to {path.resolve()} ({error.strerror or error}).") from None
    finally:
        Path(partial).unlink(missing_ok=True)
    print(f"Wrote {path} ({path.stat().st_size / 1e6:.1f} MB): input {INPUT_NAME} uint8 (N, 3, {IMAGE_SIZE}, "
          f"{IMAGE_SIZE}), output {OUTPUT_NAME} (N, {len(model.class_names)}); tta_flip "
          f"{program.model.metadata_props['tta_flip']}.")
    return path
