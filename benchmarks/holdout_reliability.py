"""Where one temperature leaves a recipe's models miscalibrated, seen on their hold-out only (the test
split is never read): the reliability table of several seeds' temperature-scaled probabilities, pooled,
and two other maps scored beside the temperature, each fitted on one half of the hold-out and scored on
the other.

    python benchmarks/holdout_reliability.py --fit_config configs/robust.yaml --tta_flip true --ckpt_path SEED0 SEED1 SEED2

- temperature: what ``fit`` and ``calibrate`` ship (each view's softmax at T, averaged over the views);
- temperature on averaged logits: the same single parameter, the views averaged before the softmax;
- vector scaling (Guo et al. 2017): a scale and a bias per class on the log-probabilities.

Bins whose accuracy stays below their confidence in the pooled table, with hundreds of images each,
are a shape that no single temperature removes.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

import torch
import torch.nn.functional as F

from cifar_lightning.calibration.holdout import (
    check_never_trained_on,
    config_data,
    holdout_batches,
)
from cifar_lightning.calibration.reliability import reliability_bins
from cifar_lightning.calibration.temperature import (
    Scores,
    calibration_scores,
    collect_view_logits,
    fit_temperature,
)
from cifar_lightning.errors import UserInputError
from cifar_lightning.model.checkpoints import check_checkpoint
from cifar_lightning.model.loading import load_classifier
from cifar_lightning.model.probabilities import combine_views

Map = Callable[[torch.Tensor, torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]


def temperature_map(view_logits: torch.Tensor, labels: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """The shipped map: NLL-optimal T, each view's softmax at T, averaged."""
    temperature = fit_temperature(view_logits, labels)
    return lambda logits: combine_views(logits, temperature)


def averaged_logits_temperature_map(view_logits: torch.Tensor,
                                    labels: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """One T on the views' mean logits (a single view: the same as ``temperature_map``)."""
    temperature = fit_temperature(view_logits.mean(0, keepdim=True), labels)
    return lambda logits: combine_views(logits.mean(0, keepdim=True), temperature)


def vector_scaling_map(view_logits: torch.Tensor, labels: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """Guo et al.'s vector scaling on the views' averaged log-probabilities: softmax(w * z + b), w and b
    per class, NLL-optimal (LBFGS). It may change a prediction, which a temperature never does."""
    scores = combine_views(view_logits, 1.0)
    scale = torch.ones(scores.shape[-1], requires_grad=True)
    bias = torch.zeros(scores.shape[-1], requires_grad=True)
    optimizer = torch.optim.LBFGS([scale, bias], lr=1.0, max_iter=500, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(scores * scale + bias, labels)
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    scale, bias = scale.detach(), bias.detach()
    return lambda logits: (combine_views(logits, 1.0) * scale + bias).log_softmax(-1)


MAPS: dict[str, Map] = {
    "temperature": temperature_map,
    "temperature on averaged logits": averaged_logits_temperature_map,
    "vector scaling": vector_scaling_map,
}


def out_of_fold(fit: Map, view_logits: torch.Tensor, labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Log-probabilities (N, C) where each half of the images is mapped by ``fit`` fitted on the other half."""
    order = torch.randperm(len(labels), generator=generator)
    halves = order[: len(order) // 2], order[len(order) // 2:]
    mapped = torch.empty(view_logits.shape[1:])
    for fitted_on, scored in (halves, halves[::-1]):
        mapped[scored] = fit(view_logits[:, fitted_on], labels[fitted_on])(view_logits[:, scored])
    return mapped


def describe(scores: Scores) -> str:
    return f"accuracy {scores.accuracy:.4f}, ECE {scores.ece:.2%}, NLL {scores.nll:.4f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt_path", nargs="+", required=True, help="models of one recipe (seeds) with the same hold-out")
    parser.add_argument("--fit_config", required=True, help="the fit config whose hold-out the checkpoints kept out")
    parser.add_argument("--tta_flip", choices=["true", "false"], help="flip averaging for every model (default: each checkpoint's own)")
    parser.add_argument("--data_dir", default="data", help="folder holding CIFAR-10 (either layout)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split into halves")
    parser.add_argument("--cache_dir", default=".cache/cifar_lightning", help="decode cache ('none': no cache)")
    args = parser.parse_args(argv)
    cache_dir = None if args.cache_dir.lower() == "none" else args.cache_dir
    try:
        data = config_data(args.fit_config)
        val_size, seed = int(data.get("val_size", 10000)), int(data.get("seed", 0))
        for path in args.ckpt_path:
            check_never_trained_on(check_checkpoint(path), val_size, seed, path)
        holdout = list(holdout_batches(data, args.data_dir, val_size, seed, cache_dir))
    except UserInputError as error:
        sys.exit(f"error: {error}")
    pooled: dict[str, list[torch.Tensor]] = {name: [] for name in MAPS}
    shipped, pooled_labels = [], []
    for path in args.ckpt_path:
        model = load_classifier(path)
        if args.tta_flip is not None:
            model.hparams.tta_flip = args.tta_flip == "true"
        view_logits, labels = collect_view_logits(model, holdout)
        temperature = fit_temperature(view_logits, labels)
        shipped.append(combine_views(view_logits, temperature))
        pooled_labels.append(labels)
        print(f"{path} (tta_flip {bool(model.hparams.tta_flip)}): {len(labels)} held-out images, T {temperature:.4f}")
        for name, fit in MAPS.items():
            mapped = out_of_fold(fit, view_logits, labels, torch.Generator().manual_seed(args.seed))
            pooled[name].append(mapped)
            print(f"  {name}, fitted on one half, scored on the other: {describe(calibration_scores(mapped, labels))}")
    labels = torch.cat(pooled_labels)
    print(f"All {len(args.ckpt_path)} models pooled ({len(labels)} images), each half scored by a map fitted on the other:")
    for name, mapped in pooled.items():
        print(f"  {name}: {describe(calibration_scores(torch.cat(mapped), labels))}")
    bins = reliability_bins(torch.cat(shipped).exp(), labels)
    print("Pooled reliability at each model's hold-out T (accuracy - confidence < 0: overconfident):")
    print("  confidence bin   images  confidence  accuracy  accuracy - confidence")
    for i in torch.nonzero(bins.counts).flatten().tolist():
        low, high = bins.edges[i].item(), bins.edges[i + 1].item()
        gap = bins.accuracy[i] - bins.confidence[i]
        print(f"  {low:.2f}-{high:.2f}      {int(bins.counts[i]):6d}      {bins.confidence[i]:.3f}     "
              f"{bins.accuracy[i]:.3f}  {gap:+.3f}")


if __name__ == "__main__":
    main()
