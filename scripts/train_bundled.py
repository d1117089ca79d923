#!/usr/bin/env python
"""Train the small bundled model (PE-Core-Shapes-T8-64) on synthetic shapes, on CPU, reproducibly.

    python scripts/train_bundled.py                      # full run (about 35 minutes on one CPU core)
    python scripts/train_bundled.py --scale 0.05 --no-install   # a quick check of the pipeline

It calls the same API as ``pe train`` (``perception_encoder.train.train``) with a fixed config and seed:
progressive resolution 32 -> 48 -> 64 px, LAMB with warm-up and cosine decay, crop / colour-jitter / flip
augmentation (flip swaps "left" and "right" in captions), mask regularisation on 1/16 of each batch.
Afterwards it measures zero-shot accuracy on held-out colour+shape combinations (never seen in training)
and, unless ``--no-install``, writes the weights (fp16) and config to
``src/perception_encoder/assets/bundled/`` together with a small report.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch

from perception_encoder.configs import config_to_dict, get_model_info
from perception_encoder.train import TrainConfig, train
from perception_encoder.train.checkpoint import export_model
from perception_encoder.train.synthetic import ShapesGenerator, all_class_names, class_names, combinations
from perception_encoder.zeroshot import zero_shot_classifier, zero_shot_logits

NAME = "PE-Core-Shapes-T8-64"
ASSETS = Path(__file__).resolve().parents[1] / "src" / "perception_encoder" / "assets" / "bundled"
TEMPLATES = ("a photo of a {}.", "a drawing of a {}.", "a {}.")

# A PE-Core architecture (CLS token, absolute + 2D RoPE positions, attention pooling), tiny enough for CPU;
# its config is the registry entry (configs.py), so `perception_encoder.load(NAME)` builds the same model.
MODEL = get_model_info(NAME).config

# (image size, steps) per progressive-resolution stage of the full run
STAGES = ((32, 500), (48, 1500), (64, 2000))


def run_config(out: Path, scale: float) -> TrainConfig:
    stages = [{"image_size": s, "steps": max(1, round(n * scale))} for s, n in STAGES]
    total = sum(s["steps"] for s in stages)
    return TrainConfig.from_dict(
        {
            "model_config": config_to_dict(MODEL),
            "data": {"source": "synthetic:1000000", "synthetic_seed": 0},
            "stages": stages,
            "batch_size": 64,
            # a fixed random token embedding: the captions use a few dozen of its 49,408 rows, and its
            # dense gradient and LAMB update would cost more CPU time than the rest of the model
            "freeze": ["text.token_embedding"],
            "optim": {
                "name": "lamb",
                "lr": 5e-3,
                "weight_decay": 0.05,
                "warmup_steps": max(1, round(0.06 * total)),
                "min_lr_ratio": 0.02,
            },
            # mild crops with little aspect change: stretching turns squares into rectangles
            "augment": {
                "crop_scale": [0.85, 1.0],
                "crop_ratio": [0.9, 1.1],
                "brightness": 0.2,
                "contrast": 0.2,
                "saturation": 0.2,
            },
            "mask": {"fraction": 1 / 16, "ratio": 0.5},
            "seed": 0,
            "out": str(out),
            "resume": "auto",
            "checkpoint_every": 100,
            "log_every": 10,
        }
    )


@torch.no_grad()
def zero_shot_accuracy(model, classes: list[str], images_per_class: int, split: str, seed: int = 1) -> float:
    """Top-1 accuracy over ``images_per_class`` drawn images of each class in ``classes`` (split's draws)."""
    from perception_encoder.transforms import image_transform

    model.eval()
    tf = image_transform(model.visual.config.image_size)
    classifier = zero_shot_classifier(model, classes, TEMPLATES)
    gen = ShapesGenerator(seed, model.visual.config.image_size)
    correct = total = 0
    for label, name in enumerate(classes):
        color, _, shape = name.partition(" ")
        pixels = torch.stack(
            [tf(gen.object_image(color, shape, i, split).image) for i in range(images_per_class)]
        )
        pred = zero_shot_logits(model.encode_image(pixels), classifier).argmax(dim=-1)
        correct += int((pred == label).sum())
        total += images_per_class
    return correct / total


def evaluate(model, per_class: int) -> dict:
    held = class_names("test")
    seen = class_names("train")
    every = all_class_names()
    return {
        "held_out_among_held_out": zero_shot_accuracy(model, held, per_class, "test"),
        "held_out_among_held_out_chance": 1 / len(held),
        "held_out_among_all": _among(model, held, every, per_class, "test"),
        "held_out_among_all_chance": 1 / len(every),
        "seen_among_all": _among(model, seen, every, max(4, per_class // 4), "test"),
        "held_out_classes": held,
        "images_per_class": per_class,
    }


@torch.no_grad()
def _among(
    model, classes: list[str], label_set: list[str], per_class: int, split: str, seed: int = 1
) -> float:
    """Accuracy on images of ``classes`` when the classifier chooses among every name in ``label_set``."""
    from perception_encoder.transforms import image_transform

    tf = image_transform(model.visual.config.image_size)
    classifier = zero_shot_classifier(model, label_set, TEMPLATES)
    gen = ShapesGenerator(seed, model.visual.config.image_size)
    correct = total = 0
    for name in classes:
        color, _, shape = name.partition(" ")
        pixels = torch.stack([tf(gen.object_image(color, shape, i, split).image) for i in range(per_class)])
        pred = zero_shot_logits(model.encode_image(pixels), classifier).argmax(dim=-1)
        correct += int((pred == label_set.index(name)).sum())
        total += per_class
    return correct / total


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="runs/bundled", help="run folder (checkpoints, metrics.csv)")
    parser.add_argument(
        "--scale", type=float, default=1.0, help="multiply every stage's steps (quick checks)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (1 stays fast when other processes share the CPU)",
    )
    parser.add_argument("--eval-per-class", type=int, default=50, help="zero-shot images per held-out class")
    parser.add_argument("--no-install", action="store_true", help="do not write into the package's assets")
    args = parser.parse_args()

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    config = run_config(Path(args.out), args.scale)
    started = time.time()
    result = train(config)
    minutes = (time.time() - started) / 60
    report = evaluate(result.model, args.eval_per_class)
    report |= {"name": NAME, "steps": result.step, "train_minutes": round(minutes, 1), "seed": config.seed}
    report |= {"stages": [[s.image_size, s.steps] for s in config.stages], "batch_size": config.batch_size}
    report |= {"train_combinations": len(combinations("train")), "final_loss": result.losses[-1]}
    print(json.dumps(report, indent=2))
    (Path(args.out) / "zero_shot.json").write_text(json.dumps(report, indent=2) + "\n")
    if not args.no_install:
        ASSETS.mkdir(parents=True, exist_ok=True)
        path = export_model(result.model, ASSETS / f"{NAME}.safetensors", dtype=torch.float16)
        (ASSETS / f"{NAME}.eval.json").write_text(json.dumps(report, indent=2) + "\n")
        print(f"installed {path} ({path.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
