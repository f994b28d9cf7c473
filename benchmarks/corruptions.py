"""How checkpoints hold up on common corruptions: accuracy on the 15 CIFAR-10-C corruptions at five
severities (``cifar_lightning/robustness/corruptions.py``), their mean, the mean over the corruptions no robust
recipe of this project trains on (*unseen*; ``SEEN_IN_TRAINING`` lists the others), the share of
clean accuracy each keeps, and JPEG at quality 75.

    python benchmarks/corruptions.py --ckpt_path cifar_lightning/weights/cifar10_cnn.ckpt cifar_lightning/weights/cifar10_cnn_robust.ckpt
    python benchmarks/corruptions.py --ckpt_path run.ckpt --split holdout --val_size 5000   # choosing a recipe
    python benchmarks/corruptions.py --ckpt_path run.ckpt --sample 2000                     # stratified, faster
    python benchmarks/corruptions.py --ckpt_path a.ckpt b.ckpt --device cuda               # models on a GPU, TF32 off

``--split test`` scores the test split (reporting a finished model); ``--split holdout`` scores the
hold-out a ``fit`` with ``data.val_size`` kept out of training (the images to choose recipes on).
Each corrupted set is made once (seeded) and scored by every checkpoint, in full precision with
the model's own ``predict_proba``. Prints a table per model and writes ``corruptions.json``,
``corruptions.md`` and ``corruptions.png`` (accuracy against severity, one line per corruption,
one panel per model) into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import matplotlib
import torch
from matplotlib.figure import Figure

from cifar_lightning.data.datamodule import CIFAR10DataModule
from cifar_lightning.errors import UserInputError
from cifar_lightning.infer.predict import predict_probabilities
from cifar_lightning.model.checkpoints import check_checkpoint
from cifar_lightning.model.loading import load_classifier
from cifar_lightning.precision import cpu_name
from cifar_lightning.progress import progress
from cifar_lightning.robustness.corruptions import (
    CORRUPTIONS,
    SEEN_IN_TRAINING,
    SEVERITIES,
    corrupt,
)
from cifar_lightning.robustness.jpeg import reencode_jpeg

JPEG_Q75 = 75


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt_path", nargs="+", required=True, help="checkpoints to score")
    parser.add_argument("--data_dir", default="data", help="folder holding CIFAR-10 (either layout)")
    parser.add_argument("--split", choices=("test", "holdout"), default="test")
    parser.add_argument("--val_size", type=int, default=5000, help="hold-out size (--split holdout)")
    parser.add_argument("--holdout_seed", type=int, default=0, help="hold-out seed (data.seed, --split holdout)")
    parser.add_argument("--sample", type=int, default=0, help="score a stratified sample of this many images (0: all)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random corruptions")
    parser.add_argument("--cache_dir", default=".cache/cifar_lightning", help="decode cache ('none': no cache)")
    parser.add_argument("--batch_size", type=int, default=500)
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                        help="where the models run (auto: a CUDA GPU where there is one); full precision either way")
    parser.add_argument("--out", default="robustness", help="folder for corruptions.json, .md and .png")
    parser.add_argument("--anchors", default=None, help="published results to list beside ours (a JSON file like "
                        "docs/robustness/robustbench_anchors.json)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: PyTorch sees no CUDA GPU here")
    if args.sample < 0 or args.batch_size < 1:
        parser.error(f"--sample must be at least 0 and --batch_size at least 1, got {args.sample} and {args.batch_size}")
    args.cache_dir = None if args.cache_dir.lower() == "none" else args.cache_dir
    return args


def evaluation_images(args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor, str]:
    """(uint8 images, labels, what they are) of the chosen split, stratified-sampled if asked."""
    data = CIFAR10DataModule(data_dir=args.data_dir, download=False, val_size=args.val_size if args.split == "holdout" else 0,
                             seed=args.holdout_seed, augment=None, cache_dir=args.cache_dir)
    if args.split == "holdout":
        data.setup("validate")
        split, what = data.val_set, f"the hold-out (data.val_size {args.val_size}, data.seed {args.holdout_seed})"
    else:
        data.setup("test")
        split, what = data.test_set, "the test split"
    images, labels = split.images, split.labels
    if args.sample:
        classes = labels.unique()
        per_class = args.sample // len(classes)
        keep = torch.cat([(labels == c).nonzero().flatten()[:per_class] for c in classes]).sort().values
        images, labels = images[keep], labels[keep]
        what = f"a stratified sample of {len(labels)} images ({per_class} a class) of {what}"
    return images, labels, what


def accuracy(model, images: torch.Tensor, labels: torch.Tensor, batch_size: int) -> float:
    return (predict_probabilities(model, images, batch_size).argmax(-1) == labels).float().mean().item()


def score(models: dict[str, object], images: torch.Tensor, labels: torch.Tensor, args) -> dict[str, dict]:
    """{model: {"clean", "jpeg_q75", "corruptions": {name: [acc per severity]}, "mean", "kept"}}."""
    results = {name: {"clean": accuracy(m, images, labels, args.batch_size)} for name, m in models.items()}
    jpeg = reencode_jpeg(images, JPEG_Q75)
    for name, model in models.items():
        results[name]["jpeg_q75"] = accuracy(model, jpeg, labels, args.batch_size)
        results[name]["corruptions"] = {}
    for corruption in CORRUPTIONS:
        started = time.perf_counter()
        for severity in progress(SEVERITIES, corruption, unit=" severities"):
            corrupted = corrupt(images, corruption, severity, args.seed)
            for name, model in models.items():
                results[name]["corruptions"].setdefault(corruption, []).append(
                    accuracy(model, corrupted, labels, args.batch_size))
        done = CORRUPTIONS.index(corruption) + 1
        print(f"  [{done}/{len(CORRUPTIONS)}] {corruption} ({time.perf_counter() - started:.0f} s): "
              + ", ".join(f"{name} {sum(r['corruptions'][corruption]) / 5:.4f}" for name, r in results.items()),
              flush=True)
    for result in results.values():
        summarise(result)
    return results


def summarise(result: dict) -> dict:
    """Adds the means over all corruptions and over the unseen ones, and the share of clean each keeps."""
    def mean(names):
        every = [a for name in names for a in result["corruptions"][name]]
        return sum(every) / len(every)
    unseen = [name for name in result["corruptions"] if name not in SEEN_IN_TRAINING]
    result["mean"] = mean(result["corruptions"])
    result["kept"] = result["mean"] / result["clean"]
    result["mean_unseen"] = mean(unseen)
    result["kept_unseen"] = result["mean_unseen"] / result["clean"]
    return result


def summary(results: dict[str, dict], anchors: dict | None) -> list[str]:
    """One row per model (and per published anchor): clean, the means over all and over the unseen
    corruptions with the share of clean each keeps, JPEG."""
    unseen = len([name for name in CORRUPTIONS if name not in SEEN_IN_TRAINING])
    lines = [f"| model | clean | mean, all {len(CORRUPTIONS)} corruptions x 5 severities | share kept | "
             f"mean, {unseen} unseen | share kept, unseen | JPEG (CIFAR-10-C, mean of 5) | JPEG q75 |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in results.items():
        jpeg = sum(r["corruptions"]["jpeg_compression"]) / 5
        lines.append(f"| {name} | {r['clean']:.4f} | {r['mean']:.4f} | {r['kept']:.1%} | {r['mean_unseen']:.4f} | "
                     f"{r['kept_unseen']:.1%} | {jpeg:.4f} | {r['jpeg_q75']:.4f} |")
    for name, a in (anchors or {}).get("models", {}).items():
        a = summarise(dict(a))
        jpeg = sum(a["corruptions"]["jpeg_compression"]) / 5
        protocol = (anchors.get("protocol") or {}).get(name, "published")
        lines.append(f"| {name} ({a['network']}; published, not ours; {protocol}) | {a['clean']:.4f} | {a['mean']:.4f} | "
                     f"{a['kept']:.1%} | {a['mean_unseen']:.4f} | {a['kept_unseen']:.1%} | {jpeg:.4f} | |")
    return lines


def markdown(results: dict[str, dict], what: str, anchors: dict | None = None) -> str:
    lines = [f"Accuracy on {what}, full precision; each corruption at severities 1-5 and their mean. "
             f"*Seen*: a robust recipe of this project trains on the same kind of transformation "
             f"({', '.join(SEEN_IN_TRAINING)}); the others are *unseen*.", "",
             *summary(results, anchors), ""]
    if anchors:
        lines += [f"Published rows: {anchors['source']}.", ""]
    for name, result in results.items():
        lines += [f"**{name}**: clean {result['clean']:.4f}, JPEG q75 {result['jpeg_q75']:.4f} "
                  f"({100 * (result['clean'] - result['jpeg_q75']):.1f} points below clean), "
                  f"mean over the {len(result['corruptions'])} corruptions x 5 severities {result['mean']:.4f} "
                  f"({result['kept']:.1%} of clean), over the unseen ones {result['mean_unseen']:.4f} "
                  f"({result['kept_unseen']:.1%})", "",
                  "| corruption | seen in training | 1 | 2 | 3 | 4 | 5 | mean |",
                  "|---|---|---:|---:|---:|---:|---:|---:|"]
        for corruption, accuracies in result["corruptions"].items():
            cells = " | ".join(f"{a:.3f}" for a in accuracies)
            seen = "seen" if corruption in SEEN_IN_TRAINING else "unseen"
            lines.append(f"| {corruption} | {seen} | {cells} | {sum(accuracies) / len(accuracies):.3f} |")
        lines.append("")
    return "\n".join(lines)


def figure(results: dict[str, dict], what: str) -> Figure:
    """One panel per model, a line per corruption: solid where unseen in training, dashed where seen."""
    fig = Figure(figsize=(5.6 * len(results), 6.0), layout="constrained")
    axes = fig.subplots(1, len(results), squeeze=False, sharey=True)[0]
    colours = matplotlib.colormaps["tab20"].colors
    for ax, (name, result) in zip(axes, results.items()):
        for i, (corruption, accuracies) in enumerate(result["corruptions"].items()):
            seen = corruption in SEEN_IN_TRAINING
            ax.plot(SEVERITIES, accuracies, marker=".", color=colours[i % len(colours)], linestyle="--" if seen else "-",
                    label=f"{corruption} (seen)" if seen else corruption)
        ax.axhline(result["clean"], color="black", linestyle=":", label="clean")
        ax.set_title(f"{name}\nclean {result['clean']:.3f}, mean of 15 {result['mean']:.3f} ({result['kept']:.1%} kept)\n"
                     f"mean of the unseen {result['mean_unseen']:.3f} ({result['kept_unseen']:.1%} kept)", fontsize=9)
        ax.set(xlabel="severity", xticks=SEVERITIES, ylim=(0, 1))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=4, frameon=False, fontsize=8)
    fig.suptitle(f"Accuracy under common corruptions (CIFAR-10-C definitions), {what}", fontsize=10)
    return fig


def model_names(paths: list[str]) -> list[str]:
    """A name per checkpoint for the tables: the file's stem, with its folder's name before it where
    stems repeat (Lightning names every run's checkpoint ``last.ckpt``), so that no model silently
    takes another's place in the results."""
    stems = [Path(path).stem for path in paths]
    names = [f"{Path(path).parent.name}/{stem}" if stems.count(stem) > 1 else stem for path, stem in zip(paths, stems)]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise UserInputError(f"--ckpt_path names {', '.join(repeated)} more than once: give each checkpoint once, "
                             f"from folders of different names")
    return names


def main(argv: list[str] | None = None) -> dict[str, dict]:
    args = parse_args(argv)
    try:
        names = model_names(args.ckpt_path)
        for path in args.ckpt_path:
            check_checkpoint(path)
        images, labels, what = evaluation_images(args)
    except UserInputError as error:
        sys.exit(f"error: {error}")
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    if device.type == "cuda":  # full precision on the GPU too: no TF32 in convolutions or matrix products
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
        where = torch.cuda.get_device_name(device)
    else:
        where = f"{cpu_name()}, {torch.get_num_threads()} threads"
    models = {name: load_classifier(path).to(device) for name, path in zip(names, args.ckpt_path)}
    print(f"Scoring {', '.join(models)} on {what}; torch {torch.__version__}, {where}, float32", flush=True)
    start = time.perf_counter()
    results = score(models, images, labels, args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    anchors = json.loads(Path(args.anchors).read_text()) if args.anchors else None
    text = markdown(results, what, anchors)
    (out / "corruptions.md").write_text(text)
    (out / "corruptions.json").write_text(json.dumps({"evaluated_on": what, "corruption_seed": args.seed,
                                                      "seen_in_training": list(SEEN_IN_TRAINING),
                                                      "results": results}, indent=1))
    figure(results, what).savefig(out / "corruptions.png", dpi=100)
    print(text)
    print(f"{time.perf_counter() - start:.0f} s; wrote {out / 'corruptions.md'}, corruptions.json, corruptions.png")
    return results


if __name__ == "__main__":
    main()
