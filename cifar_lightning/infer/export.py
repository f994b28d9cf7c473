"""``python -m cifar_lightning export``: a checkpoint as one ONNX file that takes what the checkpoint takes.

The graph's input is ``images``, uint8 ``(N, 3, 32, 32)`` with any ``N``; its output is
``probabilities``, float32 ``(N, num_classes)``. The graph is the model's ``predict_proba`` exported,
the one method every other probability comes from: scaling to [0, 1], the checkpoint's
normalisation, the network with BatchNorm folded into the layers before it, the flip average where
``tta_flip`` is set (taken from the checkpoint unless given), the temperature and the softmax. The
class names, the temperature and the other facts a user needs are in the model's ``metadata_props``::

    import json, onnxruntime as ort
    session = ort.InferenceSession("model.onnx")
    meta = session.get_modelmeta().custom_metadata_map
    classes = json.loads(meta["class_names"])
    probabilities = session.run(None, {"images": uint8_images})[0]

Made with ``torch.onnx.export(..., dynamo=True)`` (TorchScript export is deprecated).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor, nn

from cifar_lightning.atomic import check_output_file, write_atomically
from cifar_lightning.decode import IMAGE_SIZE
from cifar_lightning.errors import UserInputError
from cifar_lightning.model.classifier import CIFAR10Classifier
from cifar_lightning.model.loading import load_classifier

INPUT_NAME = "images"
OUTPUT_NAME = "probabilities"


class ExportError(UserInputError):
    """The ONNX file cannot be written where asked."""


class ProbabilitiesModel(nn.Module):
    """``model.predict_proba`` as a module's ``forward``, which is what ``torch.onnx.export`` takes.

    The folded network ``predict_proba`` runs is made here, before tracing, and registered as a
    child, so that its weights enter the graph as the graph's own initialisers.
    """

    def __init__(self, model: CIFAR10Classifier) -> None:
        super().__init__()
        self.model = model.eval()
        self.folded = model.inference_net()

    def forward(self, images: Tensor) -> Tensor:
        return self.model.predict_proba(images)


def to_onnx_program(model: CIFAR10Classifier, tta_flip: bool | None = None):
    """The ``torch.onnx.ONNXProgram`` of ``ProbabilitiesModel``, with a dynamic batch dimension and metadata."""
    tta = bool(model.hparams.tta_flip if tta_flip is None else tta_flip)
    saved_tta, model.hparams.tta_flip = model.hparams.tta_flip, tta
    example = torch.zeros(2, 3, IMAGE_SIZE, IMAGE_SIZE, dtype=torch.uint8)
    try:
        with torch.inference_mode(False), torch.no_grad():
            program = torch.onnx.export(
                ProbabilitiesModel(model).eval(), (example,), dynamo=True, input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME], dynamic_shapes={"images": {0: torch.export.Dim("batch", min=1)}},
                verbose=False,
            )
    finally:
        model.hparams.tta_flip = saved_tta
    batch_dim = program.model.graph.inputs[0].shape[0]
    if isinstance(batch_dim, int):  # the exporter can fall back to fixed shapes rather than fail
        raise RuntimeError(f"The exported graph takes a fixed batch of {batch_dim} images, not any number.")
    program.model.metadata_props.update({
        "class_names": json.dumps(list(model.class_names)),
        "input": f"{INPUT_NAME}: uint8 (N, 3, {IMAGE_SIZE}, {IMAGE_SIZE}), RGB, values 0-255",
        "output": f"{OUTPUT_NAME}: float32 (N, {len(model.class_names)}), softmax, class order as class_names",
        "tta_flip": json.dumps(tta),
        "tta_translate": json.dumps(int(model.hparams.get("tta_translate", 0))),
        "temperature": json.dumps(float(model.hparams.temperature)),
        "producer": "cifar_lightning export",
    })
    return program


def export_onnx(ckpt_path: str, output: str = "model.onnx", tta_flip: bool | None = None) -> Path:
    """Write a checkpoint as an ONNX file: uint8 images (N, 3, 32, 32) in, class probabilities out.

    Scaling, normalisation, the network (BatchNorm folded) and softmax are inside the graph; the class
    names are in its metadata (``class_names``, a JSON list). Check it with onnxruntime (docs/deploy.md).

    Args:
        ckpt_path: A checkpoint written by ``fit``, e.g. cifar_lightning/weights/cifar10_cnn.ckpt.
        output: Where to write the .onnx file (replaced if it exists; written whole or not at all).
        tta_flip: Average each image's probabilities with its mirror image's, as predict does with
            --model.tta_flip true; the default takes the checkpoint's setting.
    """
    path = check_output_file(output, "the ONNX file", "model.onnx")
    model = load_classifier(ckpt_path)
    program = to_onnx_program(model, tta_flip)
    try:
        # A model file is for everyone: 0666 before the umask, as open() would make it.
        write_atomically(path, lambda file: file.write(program.model_proto.SerializeToString()), mode=0o666)
    except OSError as error:
        raise ExportError(f"Cannot write the ONNX file to {path.resolve()} ({error.strerror or error}).") from None
    print(f"Wrote {path} ({path.stat().st_size / 1e6:.1f} MB): input {INPUT_NAME} uint8 (N, 3, {IMAGE_SIZE}, "
          f"{IMAGE_SIZE}), output {OUTPUT_NAME} (N, {len(model.class_names)}); tta_flip "
          f"{program.model.metadata_props['tta_flip']}, temperature {program.model.metadata_props['temperature']}.")
    return path
