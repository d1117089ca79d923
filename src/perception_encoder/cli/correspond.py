"""``pe correspond IMG1 IMG2 --out FILE.png``: point correspondences drawn between two images."""

from __future__ import annotations

import click

from .options import (
    IMAGE_PATH,
    image_size_option,
    layer_option,
    model_options,
    open_rgb,
    out_option,
)
from .output import wrote


@click.command("correspond")
@click.argument("image1", type=IMAGE_PATH)
@click.argument("image2", type=IMAGE_PATH)
@model_options
@layer_option(-1)
@image_size_option
@click.option(
    "--topk", "-k", type=click.IntRange(min=1), default=50, show_default=True, help="Draw the k best matches."
)
@click.option(
    "--one-way", is_flag=True, help="Each patch of IMAGE1 to its nearest patch of IMAGE2 (not only mutual)."
)
@out_option([".png"], "Output picture (.png).")
def command(image1, image2, model_choice, layer, image_size, topk, one_way, out) -> None:
    """Match patches of IMAGE1 and IMAGE2 (mutual nearest neighbours of their features at --layer) and
    draw the best matches as lines between the two images side by side."""
    from ..dense import correspondence_figure, match_images
    from ..dense.render import save_png

    pil1, pil2 = open_rgb(image1), open_rgb(image2)
    model = model_choice.load(vision_only=True)
    matches = match_images(
        model, pil1, pil2, layer=layer, image_size=image_size, topk=topk, mutual=not one_way
    )
    path = save_png(correspondence_figure(pil1, pil2, matches), out)
    best = f", best similarity {matches.scores[0]:.3f}" if len(matches) else ""
    wrote(path, f"{len(matches)} correspondences{best}")
