"""``pe track VIDEO_OR_FRAME_DIR --mask MASK.png --out DIR``: propagate a first-frame mask through a video."""

from __future__ import annotations

import itertools
from pathlib import Path

import click
import numpy as np

from .options import IMAGE_PATH, image_size_option, layer_option, model_options


class MaskFile:
    """A first-frame mask read from an image file, and the way to write masks back in the same style.

    Palette (``P``) PNGs as in DAVIS keep their palette; grey (``L``) and 1-bit masks keep their values;
    RGB masks (e.g. painted in an editor) get one id per colour (black = background, 0) and are written as
    palette PNGs with those colours.
    """

    def __init__(self, path: str) -> None:
        from PIL import Image

        from ..images import load_image

        img = load_image(path)
        self.palette: list[int] | None = None
        if img.mode == "P":
            self.ids = np.array(img)
            self.palette = img.getpalette()
        elif img.mode in ("L", "I", "I;16"):
            self.ids = np.array(img)
        elif img.mode == "1":
            self.ids = np.array(img).astype(np.uint8) * 255
        else:  # colour masks: one id per distinct colour
            rgb = np.array(img.convert("RGB")).reshape(-1, 3)
            colors, inverse = np.unique(rgb, axis=0, return_inverse=True)
            if len(colors) > 256:
                raise click.BadParameter(
                    f"{path}: {len(colors)} colours; a mask needs one flat colour per object",
                    param_hint="--mask",
                )
            black = np.where((colors == 0).all(1))[0]
            order = np.argsort([0 if i in black else 1 for i in range(len(colors))], kind="stable")
            rank = np.empty_like(order)
            rank[order] = np.arange(len(order))  # black first -> id 0
            self.ids = rank[inverse.reshape(-1)].reshape(img.height, img.width).astype(np.uint8)
            self.palette = [int(v) for c in colors[order] for v in c]
        self.size = (img.width, img.height)
        self._image = Image
        if len(np.unique(self.ids)) < 2:
            raise click.BadParameter(
                f"{path} holds a single value; mark the object(s) to track with other values",
                param_hint="--mask",
            )

    def to_image(self, mask: np.ndarray):
        """A propagated mask ``(H, W)`` -> a PIL image in this file's style."""
        if self.palette is not None:
            img = self._image.fromarray(mask.astype(np.uint8), mode="P")
            img.putpalette(self.palette)
            return img
        if mask.max() > 255:
            return self._image.fromarray(mask.astype(np.uint16))
        return self._image.fromarray(mask.astype(np.uint8), mode="L")

    def colors(self) -> dict[int, tuple[int, int, int]]:
        """A colour per object id (for overlays)."""
        from ..dense.render import distinct_colors

        objects = [int(i) for i in np.unique(self.ids) if i != 0]
        if self.palette is not None:
            return {i: tuple(self.palette[3 * i : 3 * i + 3]) for i in objects}
        return dict(zip(objects, distinct_colors(len(objects)), strict=True))


def _overlay(frame, mask: np.ndarray, colors: dict[int, tuple[int, int, int]], alpha: float = 0.5):
    from PIL import Image

    img = np.asarray(frame.convert("RGB")).astype(np.float32)
    paint = img.copy()
    for i, color in colors.items():
        paint[mask == i] = color
    return Image.fromarray((img * (1 - alpha) + paint * alpha).round().astype(np.uint8))


@click.command("track")
@click.argument("source", type=click.Path(exists=True))
@click.option(
    "--mask", required=True, type=IMAGE_PATH, help="Object ids of the first frame (PNG: P, L or RGB)."
)
@model_options
@layer_option(-1)
@image_size_option
@click.option(
    "--topk", "-k", type=click.IntRange(min=1), default=5, show_default=True, help="Neighbours per patch."
)
@click.option(
    "--temperature",
    type=click.FloatRange(min=0.0, min_open=True),
    default=0.1,
    show_default=True,
    help="Softmax temperature of the affinities.",
)
@click.option(
    "--context",
    type=click.IntRange(min=0),
    default=7,
    show_default=True,
    help="Previous frames kept as context (besides the first).",
)
@click.option(
    "--radius",
    type=click.IntRange(min=0),
    default=12,
    show_default=True,
    help="Neighbourhood radius in patches.",
)
@click.option("--max-frames", type=click.IntRange(min=1), default=None, help="Stop after this many frames.")
@click.option(
    "--overlay", is_flag=True, help="Also write frames with the masks painted over, in DIR/overlay."
)
@click.option(
    "--out", "-o", required=True, type=click.Path(file_okay=False), help="Output folder for the masks."
)
def command(
    source,
    mask,
    model_choice,
    layer,
    image_size,
    topk,
    temperature,
    context,
    radius,
    max_frames,
    overlay,
    out,
) -> None:
    """Propagate MASK (the first frame's objects) through SOURCE (a video file or a folder of frames)
    with patch-feature affinities, writing one mask PNG per frame to --out."""
    from ..dense import iter_propagate_masks
    from ..dense.features import to_rgb_image
    from ..video import iter_frames, list_frame_files

    first = MaskFile(mask)
    src = Path(source)
    if src.is_dir():
        files = list_frame_files(src)
        names = [f.stem for f in files]
        frames = iter(files)
    else:
        names = None
        frames = iter_frames(src)
    frames = itertools.islice(frames, max_frames)
    model = model_choice.load(vision_only=True)

    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    if overlay:
        (out_dir / "overlay").mkdir(exist_ok=True)
    pending: dict[int, object] = {}  # frames read ahead of their mask, kept for the overlay

    def stash():
        for i, frame in enumerate(frames):
            pil = to_rgb_image(frame)
            if overlay:
                pending[i] = pil
            yield pil

    colors = first.colors()
    count = 0
    masks = iter_propagate_masks(
        model,
        stash(),
        first.ids,
        layer=layer,
        image_size=image_size,
        topk=topk,
        temperature=temperature,
        context_frames=context,
        radius=radius,
    )
    for i, m in enumerate(masks):
        name = names[i] if names else f"{i:05d}"
        arr = m.numpy()
        first.to_image(arr).save(out_dir / f"{name}.png")
        if overlay:
            _overlay(pending.pop(i), arr, colors).save(out_dir / "overlay" / f"{name}.png")
        count += 1
    click.echo(f"wrote {count} masks to {out_dir}")
