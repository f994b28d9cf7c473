"""How precisely a hold-out fixes a checkpoint's temperature, and what that precision costs on the test
split: a diagnosis of a calibrated model, never a way to choose its temperature.

    python benchmarks/temperature_precision.py --ckpt_path cifar_lightning/weights/cifar10_cnn_robust.ckpt --fit_config configs/robust.yaml

- The NLL-optimal temperature on the checkpoint's hold-out (what ``fit`` and ``calibrate`` fit), and
  its spread over bootstrap resamples of that hold-out: the uncertainty a hold-out of that size leaves.
- For diagnosis only: the temperature that would minimise the NLL on the test split itself, and the
  test ECE and NLL at both. If the two temperatures differ by about the bootstrap's spread, a test
  ECE above target comes from the hold-out's size, not from temperature scaling's limits.
"""

from __future__ import annotations

import argparse
import sys

import torch

from cifar_lightning.calibration.holdout import (
    check_never_trained_on,
    config_data,
    holdout_batches,
)
from cifar_lightning.calibration.temperature import (
    calibration_scores,
    collect_view_logits,
    fit_temperature,
)
from cifar_lightning.data.sources import load_split
from cifar_lightning.errors import UserInputError
from cifar_lightning.model.checkpoints import check_checkpoint
from cifar_lightning.model.loading import load_classifier
from cifar_lightning.model.probabilities import combine_views


def bootstrap_temperatures(view_logits: torch.Tensor, labels: torch.Tensor, resamples: int,
                           generator: torch.Generator) -> torch.Tensor:
    """NLL-optimal temperatures (resamples,) of bootstrap resamples (with replacement) of held-out logits."""
    n = len(labels)
    picks = (torch.randint(0, n, (n,), generator=generator) for _ in range(resamples))
    return torch.tensor([fit_temperature(view_logits[:, rows], labels[rows]) for rows in picks])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt_path", required=True)
    parser.add_argument("--fit_config", required=True, help="the fit config whose hold-out the checkpoint kept out")
    parser.add_argument("--data_dir", default="data", help="folder holding CIFAR-10 (either layout)")
    parser.add_argument("--resamples", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache_dir", default=".cache/cifar_lightning", help="decode cache ('none': no cache)")
    args = parser.parse_args(argv)
    cache_dir = None if args.cache_dir.lower() == "none" else args.cache_dir
    try:
        checkpoint = check_checkpoint(args.ckpt_path)
        data = config_data(args.fit_config)
        val_size, seed = int(data.get("val_size", 10000)), int(data.get("seed", 0))
        check_never_trained_on(checkpoint, val_size, seed, args.ckpt_path)
        holdout = holdout_batches(data, args.data_dir, val_size, seed, cache_dir)
        test = load_split(args.data_dir, train=False, cache_dir=cache_dir)
    except UserInputError as error:
        sys.exit(f"error: {error}")
    model = load_classifier(args.ckpt_path)
    held_logits, held_labels = collect_view_logits(model, holdout)
    fitted = fit_temperature(held_logits, held_labels)
    spread = bootstrap_temperatures(held_logits, held_labels, args.resamples, torch.Generator().manual_seed(args.seed))
    print(f"{args.ckpt_path} (tta_flip {bool(model.hparams.tta_flip)}, temperature {model.hparams.temperature:.4f})")
    print(f"  hold-out ({len(held_labels)} images): T {fitted:.4f}; {args.resamples} bootstrap resamples: sd "
          f"{spread.std():.4f}, 95% between {spread.quantile(0.025):.4f} and {spread.quantile(0.975):.4f}")
    test_logits, test_labels = collect_view_logits(model, zip(test.images.split(500), test.labels.split(500)))
    oracle = fit_temperature(test_logits, test_labels)
    for what, temperature in (("the hold-out's T", fitted), ("the test split's own T (diagnosis only)", oracle)):
        scores = calibration_scores(combine_views(test_logits, temperature), test_labels)
        print(f"  test ({len(test_labels)} images) at {what}, {temperature:.4f}: ECE {scores.ece:.2%}, NLL {scores.nll:.4f}")


if __name__ == "__main__":
    main()
