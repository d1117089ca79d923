"""Weight initialisation for training from scratch (CLIP practice, as in OpenAI CLIP and open_clip).

The model classes initialise every tensor already, but with generic defaults (a unit-variance token
embedding, uniform linear layers). Contrastive training starts better from the CLIP scheme: small token and
position embeddings, attention and MLP weights scaled by width, output projections further scaled by
``(2 * depth) ** -0.5`` so the residual stream does not grow with depth, zero biases.
"""

from __future__ import annotations

import torch
from torch import nn

from ..layers.transformer import Transformer


@torch.no_grad()
def init_transformer(t: Transformer, width: int) -> None:
    attn_std = width**-0.5
    proj_std = width**-0.5 * (2 * max(1, t.depth)) ** -0.5
    fc_std = (2 * width) ** -0.5
    for block in t.resblocks:
        nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
        nn.init.zeros_(block.attn.in_proj_bias)
        nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
        nn.init.zeros_(block.attn.out_proj.bias)
        nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
        nn.init.zeros_(block.mlp.c_fc.bias)
        nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)
        nn.init.zeros_(block.mlp.c_proj.bias)


@torch.no_grad()
def init_clip_weights(model: nn.Module) -> nn.Module:
    """Re-initialise a ``CLIP`` in place (uses the global torch RNG: seed it first). Returns the model."""
    text, visual = model.text, model.visual
    nn.init.normal_(text.token_embedding.weight, std=0.02)
    nn.init.normal_(text.positional_embedding, std=0.01)
    init_transformer(text.transformer, text.config.width)
    nn.init.normal_(text.text_projection, std=text.config.width**-0.5)
    init_transformer(visual.transformer, visual.config.width)
    pool = getattr(visual, "attn_pool", None)
    if pool is not None:
        nn.init.normal_(pool.probe, std=visual.config.width**-0.5)
        nn.init.normal_(pool.attn.in_proj_weight, std=visual.config.width**-0.5)
        nn.init.zeros_(pool.attn.in_proj_bias)
    return model
