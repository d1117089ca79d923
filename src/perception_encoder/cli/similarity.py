"""``pe similarity IMAGE (--point X,Y | --text PROMPT) --out FILE.png``: a similarity heatmap."""

from __future__ import annotations

import click

from .options import (
    IMAGE_PATH,
    PointType,
    image_size_option,
    layer_option,
    model_options,
    open_rgb,
    out_option,
    require_clip,
)
from .output import wrote


@click.command("similarity")
@click.argument("image", type=IMAGE_PATH)
@click.option("--point", "-p", type=PointType(), default=None, help="Query pixel X,Y of IMAGE.")
@click.option("--text", default=None, help="Query prompt (PE-Core CLIP models only).")
@model_options
@layer_option(-1)
@image_size_option
@click.option(
    "--mode",
    type=click.Choice(["pool_values", "linear"]),
    default="pool_values",
    show_default=True,
    help="How --text maps patch tokens into the joint space (an approximation either way; see the docs).",
)
@click.option(
    "--alpha", type=click.FloatRange(0.0, 1.0), default=0.55, show_default=True, help="Heatmap opacity."
)
@out_option([".png"], "Output picture (.png).")
def command(image, point, text, model_choice, layer, image_size, mode, alpha, out) -> None:
    """Heatmap of how similar each patch of IMAGE is to the patch at --point (features at --layer), or to
    the --text prompt (last layer, patches projected into CLIP's joint space)."""
    from ..dense import point_similarity, similarity_figure, text_similarity
    from ..dense.render import save_png

    if (point is None) == (text is None):
        raise click.UsageError("give exactly one of --point X,Y or --text PROMPT")
    pil = open_rgb(image)
    if point is not None and not (0 <= point[0] < pil.width and 0 <= point[1] < pil.height):
        raise click.BadParameter(
            f"({point[0]:g}, {point[1]:g}) is outside the {pil.width}x{pil.height} image",
            param_hint="--point",
        )
    model = model_choice.load(vision_only=text is None)
    if text is not None:
        require_clip(model, "similarity --text")
        sim = text_similarity(model, pil, text, image_size=image_size, mode=mode)
    else:
        sim, _ = point_similarity(model, pil, point, layer=layer, image_size=image_size)
    path = save_png(similarity_figure(pil, sim, point=point, alpha=alpha), out)
    query = f"text {text!r}" if text is not None else f"point ({point[0]:g}, {point[1]:g})"
    wrote(path, f"similarity to {query}: min {sim.min():.3f}, max {sim.max():.3f}")
