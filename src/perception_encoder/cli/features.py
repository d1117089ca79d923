"""``pe features IMAGE --out FILE``: save an image's per-patch feature map (H', W', C)."""

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


@click.command("features")
@click.argument("image", type=IMAGE_PATH)
@model_options
@layer_option(-1)
@image_size_option
@click.option(
    "--norm/--no-norm", default=False, show_default=True, help="Apply ln_post (PE-Core) to the features."
)
@out_option([".npy", ".safetensors"], "Output file: .npy or .safetensors (key 'features').")
def command(image, model_choice, layer, image_size, norm, out) -> None:
    """Save the patch features of IMAGE after block --layer as an (H', W', C) array."""
    from ..dense import patch_features, save_features

    pil = open_rgb(image)
    model = model_choice.load(vision_only=True)
    feats = patch_features(model, pil, layer=layer, image_size=image_size, norm=norm)
    path = save_features(feats, out)
    h, w, c = feats.shape
    wrote(path, f"features {h}x{w}x{c} (layer {layer})")
