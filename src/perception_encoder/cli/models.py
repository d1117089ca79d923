"""``pe models``: a table of every registered model."""

from __future__ import annotations

import click

from .output import print_table


def format_count(n: int) -> str:
    """``86_200_000`` -> ``"86.2M"``; ``1_880_000_000`` -> ``"1.88B"``."""
    if n >= 1e9:
        return f"{n / 1e9:.2f}B"
    if n >= 1e6:
        return f"{n / 1e6:.1f}M"
    return f"{n / 1e3:.1f}K"


@click.command("models")
@click.option(
    "--family",
    type=click.Choice(["core", "lang", "spatial", "av", "a-frame", "custom"]),
    default=None,
    help="Only models of this family.",
)
def command(family: str | None) -> None:
    """List every registered model: family, parameters, resolution, widths and depths, output size.

    "params" counts what `pe.load(name)` returns (both towers for PE-Core CLIP models); "vision" counts the
    vision tower alone. Models whose weights ship inside the package are marked "bundled". PE-AV and
    PE-A-Frame rows show their audio tower's width/depth under "vision" (with the frame tower's px and
    patch for PE-AV) and the ModernBERT layers read under "text".
    """
    from ..configs import get_model_info, list_models
    from ..factory import count_parameters

    names = list_models(family)
    if not names:
        raise click.ClickException(f"no registered models of family {family!r}")
    headers = [
        "name",
        "family",
        "params",
        "vision params",
        "px",
        "patch",
        "vision width/depth",
        "text width/depth",
        "output dim",
        "weights",
    ]
    rows = []
    for name in names:
        info = get_model_info(name)
        if info.is_av:
            rows.append(_av_row(info))
            continue
        v = info.vision
        text = info.config.text if info.is_clip else None
        weights = "bundled" if info.local_weights else "hub" if info.hub_repo else "-"
        rows.append(
            [
                name,
                info.family,
                format_count(count_parameters(info.config)),
                format_count(count_parameters(v)),
                str(v.image_size),
                str(v.patch_size),
                f"{v.width}/{v.depth}",
                f"{text.width}/{text.depth}" if text else "-",
                str(v.output_dim) if v.output_dim else f"tokens ({v.width})",
                weights,
            ]
        )
    print_table(headers, rows, title="Perception Encoder models", right=headers[2:9])


def _av_row(info) -> list[str]:
    """A PE-AV / PE-A-Frame row: the frame tower's size, the audio tower's width/depth, the text layers."""
    import torch

    from ..av.loading import model_class
    from ..factory import count_parameters

    c = info.config
    try:
        with torch.device("meta"):
            params = format_count(sum(p.numel() for p in model_class(c)(c).parameters()))
    except ImportError:  # the text tower is transformers' ModernBERT: counted with the av extra installed
        params = "-"
    frames = c.frames
    return [
        info.name,
        info.family,
        params,
        format_count(count_parameters(frames)) if frames is not None else "-",
        str(frames.image_size) if frames is not None else "-",
        str(frames.patch_size) if frames is not None else "-",
        f"audio {c.audio.hidden_size}/{c.audio.num_layers}",
        f"{c.text.hidden_size}/{c.text.num_layers}",
        str(c.output_dim) + (" per 40 ms" if c.kind == "a-frame" else ""),
        "hub" if info.hub_repo else "-",
    ]
