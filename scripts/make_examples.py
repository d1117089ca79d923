#!/usr/bin/env python
"""Draw the example images of the README into ``examples/images/`` (deterministic).

    python scripts/make_examples.py
    pe classify examples/images/*.png --labels "red square,green triangle,blue cross,yellow star,purple circle,white diamond"

Each image is one shape of one colour drawn by the synthetic generator the bundled model
(PE-Core-Shapes-T8-64) was trained on, at 128 px so it reads well on screen (the model squashes it to 64).
The file name is the class.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from perception_encoder.train.synthetic import ShapesGenerator

# colour + shape pairs the bundled model saw in training, each colour and each shape once
EXAMPLES = ("red square", "green triangle", "blue cross", "yellow star", "purple circle", "white diamond")
OUT = Path(__file__).resolve().parents[1] / "examples" / "images"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=OUT, help="folder for the PNG files")
    parser.add_argument("--size", type=int, default=128, help="image side in pixels")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    gen = ShapesGenerator(seed=args.seed, image_size=args.size)
    for name in EXAMPLES:
        color, _, shape = name.partition(" ")
        path = args.out / f"{name.replace(' ', '_')}.png"
        gen.object_image(color, shape, 0, split="train").image.save(path, optimize=True)
        print(path)
    print("labels:", ",".join(EXAMPLES))


if __name__ == "__main__":
    main()
