"""How large an ECE a perfectly calibrated model would measure on N images: the floor under which a
measured ECE says nothing. The model's own probabilities on the test split are taken as the truth,
each image's label is drawn from them (so the model is calibrated by construction), and the ECE
(15 bins, as everywhere in this project) of those labels is measured, many times.

    python benchmarks/ece_floor.py --ckpt_path cifar_lightning/weights/cifar10_cnn.ckpt cifar_lightning/weights/cifar10_cnn_robust.ckpt

Prints, per checkpoint (at its own temperature and flip setting), its measured test ECE and the
floor's mean, standard deviation and 95th percentile at each ``--images`` size. A measured ECE
above that 95th percentile is a real miscalibration; one below it cannot be told from chance.
"""

from __future__ import annotations

import argparse
import sys

import torch

from cifar_lightning.calibration.temperature import calibration_scores
from cifar_lightning.data.sources import load_split
from cifar_lightning.errors import UserInputError
from cifar_lightning.infer.predict import predict_probabilities
from cifar_lightning.model.checkpoints import check_checkpoint
from cifar_lightning.model.loading import load_classifier


def calibrated_draw_eces(probs: torch.Tensor, images: int, draws: int, generator: torch.Generator) -> torch.Tensor:
    """ECEs (draws,) of ``images`` rows sampled from ``probs`` (N, C), each labelled by a class drawn
    from its own probabilities: what a perfectly calibrated model with these confidences measures."""
    eces = []
    for _ in range(draws):
        rows = probs[torch.randperm(len(probs), generator=generator)[:images]]
        labels = torch.multinomial(rows, 1, generator=generator).squeeze(1)
        eces.append(calibration_scores(rows.clamp_min(1e-12).log(), labels).ece)
    return torch.tensor(eces)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt_path", nargs="+", required=True)
    parser.add_argument("--data_dir", default="data", help="folder holding CIFAR-10 (either layout)")
    parser.add_argument("--images", type=int, nargs="+", default=[5000, 10000], help="set sizes to measure the floor at")
    parser.add_argument("--draws", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache_dir", default=".cache/cifar_lightning", help="decode cache ('none': no cache)")
    args = parser.parse_args(argv)
    try:
        for path in args.ckpt_path:
            check_checkpoint(path)
        split = load_split(args.data_dir, train=False, cache_dir=None if args.cache_dir.lower() == "none" else args.cache_dir)
    except UserInputError as error:
        sys.exit(f"error: {error}")
    for path in args.ckpt_path:
        model = load_classifier(path)
        probs = predict_probabilities(model, split.images)
        measured = calibration_scores(probs.clamp_min(1e-12).log(), split.labels).ece
        print(f"{path}: temperature {model.hparams.temperature:.4f}, tta_flip {bool(model.hparams.tta_flip)}; "
              f"test ECE {measured:.2%} on {len(split.labels)} images")
        generator = torch.Generator().manual_seed(args.seed)
        for images in args.images:
            floor = calibrated_draw_eces(probs, min(images, len(probs)), args.draws, generator)
            print(f"  perfectly calibrated, {min(images, len(probs))} images, {args.draws} draws: ECE mean "
                  f"{floor.mean():.2%}, sd {floor.std():.2%}, 95th percentile {floor.quantile(0.95):.2%}")


if __name__ == "__main__":
    main()
