"""Procedurally drawn image-caption pairs: coloured shapes, counts, positions and rendered words.

Everything is a pure function of ``(seed, split, index)``, so a dataset is reproducible without storing
it. The ``test`` split holds out colour+shape **combinations** never drawn in the ``train`` split (every
colour and every shape is still seen in training, just not together), which measures whether a model
composes what it learned: zero-shot accuracy on held-out combinations is the number reported for the
bundled model.

Kinds of training sample (captions in brackets):

- one object, optionally with a size and a position word ("a small red circle on the left"), sometimes
  named by one attribute only ("a red shape", "a circle"), which teaches the words separately;
- several copies of one object ("three blue squares");
- two different objects side by side ("a red circle to the left of a green star");
- a rendered word in a colour, drawn with Pillow's default font ('the word "cat" written in yellow').

Images are drawn at twice the requested size and downsampled, so edges are anti-aliased.
"""

from __future__ import annotations

import csv
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "orange": (250, 140, 20),
    "yellow": (245, 220, 30),
    "green": (35, 160, 55),
    "blue": (35, 85, 230),
    "purple": (140, 50, 195),
    "white": (248, 248, 248),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "diamond", "cross")
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles", "star": "stars"}
PLURALS |= {"diamond": "diamonds", "cross": "crosses"}
NUMBERS = {2: "two", 3: "three", 4: "four"}
WORDS: tuple[str, ...] = (
    "cat", "dog", "sun", "car", "tree", "fish", "bird", "book", "moon", "home", "stop", "cake", "rain", "bus",
)  # fmt: skip

# Two held-out combinations per colour (shapes i and i + 2), so every colour and every shape appears in
# several held-out classes: telling held-out classes apart needs both the colour and the shape.
HELD_OUT: tuple[tuple[str, str], ...] = tuple(
    (color, SHAPES[(i + k) % len(SHAPES)]) for i, color in enumerate(COLORS) for k in (0, 2)
)
SPLITS = ("train", "test")

_POSITIONS = {
    "on the left": (0.27, 0.5),
    "on the right": (0.73, 0.5),
    "at the top": (0.5, 0.27),
    "at the bottom": (0.5, 0.73),
    "in the center": (0.5, 0.5),
}
_PREFIXES = ("", "", "a photo of ", "a drawing of ", "an image of ")


@dataclass(frozen=True)
class ShapeSample:
    """One drawn pair. ``label`` is ``"<colour> <shape>"`` of the main object (``None`` for words)."""

    image: Image.Image
    caption: str
    label: str | None
    kind: str  # "single", "many", "pair" or "word"


def combinations(split: str = "train") -> list[tuple[str, str]]:
    """The ``(colour, shape)`` pairs a split draws objects from: the held-out ones for ``test``."""
    _check_split(split)
    held = set(HELD_OUT)
    every = [(c, s) for c in COLORS for s in SHAPES]
    return [p for p in every if (p in held) == (split == "test")]


def class_names(split: str = "test") -> list[str]:
    """Zero-shot class names (``"red circle"``, ...) of a split's combinations."""
    return [f"{c} {s}" for c, s in combinations(split)]


def all_class_names() -> list[str]:
    """Every colour+shape class name, training and held-out."""
    return [f"{c} {s}" for c in COLORS for s in SHAPES]


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


class ShapesGenerator:
    """Draws samples by index. ``image_size`` is the output side in pixels (square)."""

    def __init__(self, seed: int = 0, image_size: int = 64) -> None:
        if image_size < 16:
            raise ValueError(f"image_size must be at least 16 pixels, got {image_size}")
        self.seed = int(seed)
        self.image_size = int(image_size)

    def _rng(self, split: str, index: int, what: str = "") -> random.Random:
        # String seeds are hashed with SHA-512 by `random`, identically on every platform and run.
        return random.Random(f"shapes/{self.seed}/{split}/{what}{index}")

    # --- public ---------------------------------------------------------------------------------------

    def sample(self, index: int, split: str = "train") -> ShapeSample:
        """The ``index``-th pair of ``split``; the same arguments always give the same pixels and caption."""
        _check_split(split)
        rng = self._rng(split, index)
        combos = combinations(split)
        r = rng.random()
        if r < 0.55:
            return self._single(rng, rng.choice(combos), with_words=True)
        if r < 0.72:
            return self._many(rng, rng.choice(combos))
        if r < 0.9:
            # a held-out object is always the main one in the test split; the other comes from training
            return self._pair(rng, rng.choice(combos), rng.choice(combinations("train")))
        return self._word(rng)

    def object_image(self, color: str, shape: str, index: int, split: str = "test") -> ShapeSample:
        """One ``color`` ``shape`` at a random size and position (zero-shot evaluation images)."""
        if color not in COLORS or shape not in SHAPES:
            raise ValueError(
                f"unknown class {color!r} {shape!r}; colours {list(COLORS)}, shapes {list(SHAPES)}"
            )
        rng = self._rng(split, index, what=f"{color}-{shape}/")
        return self._single(rng, (color, shape), with_words=False)

    # --- drawing --------------------------------------------------------------------------------------

    def _canvas(self, rng: random.Random) -> tuple[Image.Image, ImageDraw.ImageDraw]:
        side = 2 * self.image_size
        grey = rng.randint(70, 170)
        bg = tuple(int(np.clip(grey + rng.randint(-14, 14), 0, 255)) for _ in range(3))
        noise = np.random.default_rng(rng.getrandbits(32)).normal(0, 5, (side, side, 1))
        pixels = np.clip(np.array(bg, dtype=np.float32) + noise, 0, 255).astype(np.uint8)
        img = Image.fromarray(pixels, "RGB")
        return img, ImageDraw.Draw(img)

    def _finish(self, img: Image.Image) -> Image.Image:
        return img.resize((self.image_size, self.image_size), Image.Resampling.LANCZOS)

    def _draw_shape(
        self, draw: ImageDraw.ImageDraw, shape: str, color: str, cx: float, cy: float, r: float, angle: float
    ) -> None:
        """Draw ``shape`` centred at ``(cx, cy)`` with half-extent ``r`` (canvas pixels)."""
        fill = COLORS[color]
        if shape == "circle":
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
            return
        if shape == "square":
            pts = _regular(cx, cy, r * 0.95 * math.sqrt(2), 4, angle + math.pi / 4)
        elif shape == "diamond":
            pts = [(cx, cy - r), (cx + 0.72 * r, cy), (cx, cy + r), (cx - 0.72 * r, cy)]
        elif shape == "triangle":
            pts = _regular(cx, cy + 0.15 * r, 1.15 * r, 3, -math.pi / 2 + angle)
        elif shape == "star":
            outer = _regular(cx, cy, 1.1 * r, 5, -math.pi / 2 + angle)
            inner = _regular(cx, cy, 0.45 * r, 5, -math.pi / 2 + angle + math.pi / 5)
            pts = [p for pair in zip(outer, inner, strict=True) for p in pair]
        elif shape == "cross":
            t = 0.33 * r
            pts = [
                (cx - t, cy - r), (cx + t, cy - r), (cx + t, cy - t), (cx + r, cy - t), (cx + r, cy + t),
                (cx + t, cy + t), (cx + t, cy + r), (cx - t, cy + r), (cx - t, cy + t), (cx - r, cy + t),
                (cx - r, cy - t), (cx - t, cy - t),
            ]  # fmt: skip
        else:
            raise ValueError(f"unknown shape {shape!r}")
        draw.polygon(pts, fill=fill)

    def _single(self, rng: random.Random, combo: tuple[str, str], with_words: bool) -> ShapeSample:
        color, shape = combo
        img, draw = self._canvas(rng)
        side = 2 * self.image_size
        size_word = rng.choice(("", "", "small", "large"))
        lo, hi = {"": (0.2, 0.25), "small": (0.14, 0.17), "large": (0.28, 0.33)}[size_word]
        r = rng.uniform(lo, hi)
        pos_word = rng.choice(("",) * 3 + tuple(_POSITIONS))
        if pos_word:
            px, py = _POSITIONS[pos_word]
            px, py = px + rng.uniform(-0.05, 0.05), py + rng.uniform(-0.05, 0.05)
        else:
            px, py = rng.uniform(0.5 - (0.45 - r) / 1.5, 0.5 + (0.45 - r) / 1.5), rng.uniform(0.3, 0.7)
        px, py = min(max(px, r + 0.02), 0.98 - r), min(max(py, r + 0.02), 0.98 - r)
        angle = rng.uniform(-0.2, 0.2)
        self._draw_shape(draw, shape, color, px * side, py * side, r * side, angle)
        if not with_words:
            size_word, pos_word = "", ""
        if with_words and rng.random() < 0.1:
            words = rng.choice((f"{color} shape", shape, f"{color} object"))
            return ShapeSample(self._finish(img), f"{_article(words)} {words}", f"{color} {shape}", "single")
        words = " ".join(w for w in (size_word, color, shape) if w)
        if with_words and rng.random() < 0.15:  # a bare label, as class names are often given
            return ShapeSample(self._finish(img), words, f"{color} {shape}", "single")
        caption = f"{rng.choice(_PREFIXES)}{_article(words)} {words}" + (f" {pos_word}" if pos_word else "")
        return ShapeSample(self._finish(img), caption, f"{color} {shape}", "single")

    def _many(self, rng: random.Random, combo: tuple[str, str]) -> ShapeSample:
        color, shape = combo
        img, draw = self._canvas(rng)
        side = 2 * self.image_size
        count = rng.choice((2, 3, 4))
        r = rng.uniform(0.11, 0.14)
        centres: list[tuple[float, float]] = []
        while len(centres) < count:  # rejection sampling; with these radii it ends within a few tries
            c = (rng.uniform(r + 0.03, 0.97 - r), rng.uniform(r + 0.03, 0.97 - r))
            if all(math.dist(c, o) > 2.3 * r for o in centres):
                centres.append(c)
        for cx, cy in centres:
            self._draw_shape(draw, shape, color, cx * side, cy * side, r * side, rng.uniform(-0.2, 0.2))
        caption = f"{rng.choice(_PREFIXES)}{NUMBERS[count]} {color} {PLURALS[shape]}"
        return ShapeSample(self._finish(img), caption, f"{color} {shape}", "many")

    def _pair(self, rng: random.Random, first: tuple[str, str], second: tuple[str, str]) -> ShapeSample:
        if second == first:
            second = (second[0], SHAPES[(SHAPES.index(second[1]) + 1) % len(SHAPES)])
            if second in HELD_OUT:  # stay inside the training combinations
                second = (second[0], SHAPES[(SHAPES.index(second[1]) + 1) % len(SHAPES)])
        img, draw = self._canvas(rng)
        side = 2 * self.image_size
        r = rng.uniform(0.15, 0.19)
        y1, y2 = rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7)
        x1, x2 = rng.uniform(0.18, 0.3), rng.uniform(0.7, 0.82)
        left_first = rng.random() < 0.5
        (lc, ls), (rc, rs) = (first, second) if left_first else (second, first)
        self._draw_shape(draw, ls, lc, x1 * side, y1 * side, r * side, rng.uniform(-0.2, 0.2))
        self._draw_shape(draw, rs, rc, x2 * side, y2 * side, r * side, rng.uniform(-0.2, 0.2))
        a, b = f"{first[0]} {first[1]}", f"{second[0]} {second[1]}"
        relation = "to the left of" if left_first else "to the right of"
        a, b = f"{_article(a)} {a}", f"{_article(b)} {b}"
        caption = rng.choice((f"{a} and {b}", f"{a} {relation} {b}"))
        return ShapeSample(self._finish(img), caption, f"{first[0]} {first[1]}", "pair")

    def _word(self, rng: random.Random) -> ShapeSample:
        img, draw = self._canvas(rng)
        side = 2 * self.image_size
        word = rng.choice(WORDS)
        color = rng.choice(list(COLORS))
        font = ImageFont.load_default(size=int(side * rng.uniform(0.26, 0.32)))
        left, top, right, bottom = draw.textbbox((0, 0), word, font=font)
        w, h = right - left, bottom - top
        x = rng.uniform(0.04 * side, max(0.04 * side, side - w - 0.04 * side)) - left
        y = rng.uniform(0.1 * side, max(0.1 * side, side - h - 0.1 * side)) - top
        draw.text((x, y), word, fill=COLORS[color], font=font)
        caption = rng.choice(
            (f'the word "{word}"', f'the word "{word}" written in {color}', f'a sign that says "{word}"')
        )
        return ShapeSample(self._finish(img), caption, None, "word")


def _regular(cx: float, cy: float, r: float, n: int, start: float) -> list[tuple[float, float]]:
    return [(cx + r * math.cos(start + 2 * math.pi * k / n), cy + r * math.sin(start + 2 * math.pi * k / n)) for k in range(n)]  # fmt: skip


def _article(words: str) -> str:
    return "an" if words[0] in "aeiou" else "a"


# --- writing datasets to disk -----------------------------------------------------------------------------


def write_image_folder(
    root: str | Path,
    split: str = "test",
    per_class: int = 20,
    *,
    seed: int = 0,
    image_size: int = 64,
    classes: Sequence[str] | None = None,
) -> Path:
    """An image-folder classification set: ``root/<class name>/<i>.png``, ``per_class`` images each.

    ``classes`` defaults to the split's combinations (the held-out ones for ``test``). Returns ``root``.
    """
    root = Path(root)
    gen = ShapesGenerator(seed, image_size)
    for name in classes if classes is not None else class_names(split):
        color, _, shape = name.partition(" ")
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            gen.object_image(color, shape, i, split).image.save(folder / f"{i:05d}.png")
    return root


def write_captions(
    root: str | Path,
    split: str = "train",
    count: int = 1000,
    *,
    seed: int = 0,
    image_size: int = 64,
    table: str = "captions.csv",
    caption_files: bool = False,
) -> Path:
    """Write ``count`` pairs as ``root/images/<i>.png`` and a table ``root/<table>`` (``.csv`` or
    ``.parquet``) with ``path`` (relative to ``root``), ``caption`` and ``label`` columns.

    ``caption_files=True`` also writes ``<i>.txt`` beside each image (the image-folder caption layout).
    Returns the table's path.
    """
    root = Path(root)
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    gen = ShapesGenerator(seed, image_size)
    rows = []
    for i in range(count):
        s = gen.sample(i, split)
        rel = f"images/{i:06d}.png"
        s.image.save(root / rel)
        if caption_files:
            (root / f"images/{i:06d}.txt").write_text(s.caption + "\n")
        rows.append({"path": rel, "caption": s.caption, "label": s.label or ""})
    out = root / table
    if out.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), out)
    else:
        with out.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["path", "caption", "label"])
            writer.writeheader()
            writer.writerows(rows)
    return out
