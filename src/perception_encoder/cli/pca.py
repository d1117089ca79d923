"""``pe pca IMAGE --out FILE.png``: the image next to a PCA-to-RGB picture of its patch features."""

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


@click.command("pca")
@click.argument("image", type=IMAGE_PATH)
@model_options
@layer_option(-1)
@image_size_option
@click.option(
    "--foreground",
    type=click.FloatRange(0.0, 1.0),
    default=None,
    help="Split object from background by the first component at this threshold (e.g. 0.5); "
    "background is drawn black.",
)
@click.option("--invert-foreground", is_flag=True, help="Swap which side of --foreground is the object.")
@click.option(
    "--smooth", is_flag=True, help="Upsample the PCA map bilinearly instead of showing patches as blocks."
)
@out_option([".png"], "Output picture (.png).")
def command(
    image,
    model_choice,
    layer,
    image_size,
    foreground,
    invert_foreground,
    smooth,
    out,
) -> None:
    """Colour IMAGE's patch features by their first three principal components (R, G, B)."""
    from ..dense import patch_features, pca_figure, pca_rgb
    from ..dense.render import save_png

    pil = open_rgb(image)
    model = model_choice.load(vision_only=True)
    feats = patch_features(model, pil, layer=layer, image_size=image_size)
    rgb = pca_rgb(feats, foreground_threshold=foreground, invert_foreground=invert_foreground)
    path = save_png(pca_figure(pil, rgb, resample="bilinear" if smooth else "nearest"), out)
    wrote(path, f"PCA picture ({rgb.shape[0]}x{rgb.shape[1]} patches, layer {layer})")
