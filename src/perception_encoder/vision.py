"""The PE vision tower: patch embedding, absolute + 2D rotary positions, blocks, pooling, projection.

Parameter names match the reference checkpoints (``conv1``, ``class_embedding``, ``positional_embedding``,
``ln_pre``, ``transformer.resblocks.N.*``, ``ln_post``, ``attn_pool.*``, ``proj``), so the reference layout
is this module's own state dict.

Shapes: pixels ``(B, 3, H, W)`` normalised as in ``transforms.image_transform``; ``H`` and ``W`` need not
be the native size nor equal (the patch grid is ``H // patch, W // patch``). Token features are
``(B, T, width)`` with ``T = grid_h * grid_w`` (+1 first when the model has a CLS token).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from .configs import VisionConfig
from .layers import AttentionPool, Transformer, rope_2d_tables
from .layers.linear import linear
from .layers.transformer import resolve_layer


def resize_position_table(
    table: torch.Tensor, grid: tuple[int, int], new_grid: tuple[int, int], prefix: int
) -> torch.Tensor:
    """An absolute position table ``(prefix + h * w, W)`` for a ``grid`` -> the table for ``new_grid``, as the
    reference resizes it (SPEC §2): the patch part bilinear, ``align_corners=False``, no antialias; the
    ``prefix`` (CLS) rows kept as they are."""
    if tuple(grid) == tuple(new_grid):
        return table
    head, patches = table[:prefix], table[prefix:]
    x = patches.reshape(1, grid[0], grid[1], -1).permute(0, 3, 1, 2)
    x = F.interpolate(x, size=tuple(new_grid), mode="bilinear", align_corners=False)
    return torch.cat([head, x.permute(0, 2, 3, 1).reshape(new_grid[0] * new_grid[1], -1)], dim=0)


class VisionTransformer(nn.Module):
    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        c = self.config = config
        self.patch_size = c.patch_size
        self.width = c.width
        self.conv1 = nn.Conv2d(3, c.width, kernel_size=c.patch_size, stride=c.patch_size, bias=False)
        scale = c.width**-0.5
        if c.use_cls_token:
            self.class_embedding = nn.Parameter(scale * torch.randn(c.width))
        if c.use_abs_posemb:
            n_pos = c.grid_size**2 + int(c.use_cls_token)
            self.positional_embedding = nn.Parameter(scale * torch.randn(n_pos, c.width))
        self.ln_pre = nn.LayerNorm(c.width, eps=c.norm_eps) if c.use_ln_pre else nn.Identity()
        self.transformer = Transformer(
            c.width, c.depth, c.heads, c.mlp_dim, ls_init_value=c.ls_init_value, eps=c.norm_eps
        )
        self.ln_post = nn.LayerNorm(c.width, eps=c.norm_eps) if c.use_ln_post else nn.Identity()
        if c.pool_type == "attn":
            self.attn_pool = AttentionPool(c.width, c.attn_pooler_heads, 4 * c.width, eps=c.norm_eps)
        if c.output_dim is not None:
            self.proj = nn.Parameter(scale * torch.randn(c.width, c.output_dim))

    # --- facts ----------------------------------------------------------------------------------------

    @property
    def num_prefix_tokens(self) -> int:
        """1 when a CLS token leads the token sequence, else 0."""
        return int(self.config.use_cls_token)

    @property
    def depth(self) -> int:
        return self.transformer.depth

    @property
    def output_dim(self) -> int:
        """Width of ``forward``'s output per image (pooled models) or per token."""
        return self.config.output_dim if self.config.output_dim is not None else self.width

    def grid_shape(self, height: int, width: int) -> tuple[int, int]:
        """The patch grid ``(rows, cols)`` for an image of ``height x width`` pixels."""
        return height // self.patch_size, width // self.patch_size

    # --- the pass -------------------------------------------------------------------------------------

    def _check_pixels(self, pixels: torch.Tensor) -> None:
        if not isinstance(pixels, torch.Tensor):
            raise TypeError(
                f"pixels must be a torch.Tensor of shape (B, 3, H, W), got {type(pixels).__name__}"
            )
        if pixels.ndim != 4 or pixels.shape[1] != 3:
            raise ValueError(f"pixels must have shape (B, 3, H, W), got {tuple(pixels.shape)}")
        h, w = pixels.shape[-2:]
        if h < self.patch_size or w < self.patch_size:
            raise ValueError(
                f"image of {h}x{w} pixels is smaller than one {self.patch_size}x{self.patch_size} patch"
            )

    def _position_embedding(self, grid_h: int, grid_w: int) -> torch.Tensor:
        """The absolute position embedding for a grid, ``(T, width)``; bilinear resize off the native grid."""
        n = self.config.grid_size
        return resize_position_table(
            self.positional_embedding, (n, n), (grid_h, grid_w), self.num_prefix_tokens
        )

    def _patch_tokens(self, pixels: torch.Tensor, grid_h: int, grid_w: int) -> torch.Tensor:
        """``conv1`` as one matrix product over flattened patches: ``(B, 3, H, W)`` -> ``(B, grid_h *
        grid_w, width)``, tokens in row-major order. Same arithmetic as the strided convolution (pixels
        past the last whole patch are dropped too), without the convolution's layout reorders and the
        transposed copy of its output."""
        p = self.patch_size
        b, c = pixels.shape[:2]
        patches = pixels[:, :, : grid_h * p, : grid_w * p].reshape(b, c, grid_h, p, grid_w, p)
        patches = patches.permute(0, 2, 4, 1, 3, 5).reshape(b, grid_h * grid_w, c * p * p)
        return linear(patches, self.conv1.weight.reshape(self.width, -1))

    def embed(self, pixels: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
        """Patch-embed and position ``pixels``; returns tokens ``(B, T, width)`` after ``ln_pre`` and the
        RoPE tables for this grid (``None`` when the model has no RoPE)."""
        self._check_pixels(pixels)
        b = pixels.shape[0]
        grid_h, grid_w = self.grid_shape(*pixels.shape[-2:])
        x = self._patch_tokens(pixels.to(self.conv1.weight.dtype), grid_h, grid_w)
        if self.config.use_cls_token:
            x = torch.cat([self.class_embedding.view(1, 1, -1).expand(b, -1, -1).to(x.dtype), x], dim=1)
        if self.config.use_abs_posemb:
            x = x + self._position_embedding(grid_h, grid_w).to(x.dtype)
        rope = None
        if self.config.use_rope2d:
            rope = rope_2d_tables(
                grid_h,
                grid_w,
                self.config.head_dim,
                cls_token=self.config.use_cls_token,
                theta=self.config.rope_theta,
                device=x.device,
            )
        return self.ln_pre(x), rope

    def forward_features(self, pixels: torch.Tensor, layer: int = -1, norm: bool = False) -> torch.Tensor:
        """Token features ``(B, T, width)`` after block ``layer`` (Python-style index, as the reference's
        ``layer_idx``: 0 is the first block, -1 the last); the pass stops there. CLS token included.
        ``norm=True`` applies ``ln_post`` (an identity for models without it)."""
        x, rope = self.embed(pixels)
        x = self.transformer(x, layer=layer, rope=rope)
        return self.ln_post(x) if norm else x

    def forward_intermediates(
        self,
        pixels: torch.Tensor,
        layers: Sequence[int] | int = (-1,),
        *,
        norm: bool = False,
        drop_cls: bool = False,
        output_fmt: Literal["NLC", "NCHW"] = "NLC",
    ) -> list[torch.Tensor]:
        """Features after several blocks from **one** pass, in the order of ``layers``.

        ``layers``: Python-style block indices, or an int ``n`` for the last ``n`` blocks. The pass stops
        at the deepest one. ``norm`` applies ``ln_post``; ``drop_cls`` removes the CLS token;
        ``output_fmt="NCHW"`` returns patch grids ``(B, width, grid_h, grid_w)`` (implies ``drop_cls``),
        otherwise tokens ``(B, T, width)``.
        """
        if output_fmt not in ("NLC", "NCHW"):
            raise ValueError(f"output_fmt must be 'NLC' or 'NCHW', got {output_fmt!r}")
        if isinstance(layers, int):
            if not 1 <= layers <= self.depth:
                raise ValueError(f"layers={layers}: ask for 1 .. {self.depth} last blocks")
            layers = list(range(self.depth - layers, self.depth))
        wanted = [resolve_layer(i, self.depth) for i in layers]
        if not wanted:
            raise ValueError("layers is empty")
        grid_h, grid_w = self.grid_shape(*pixels.shape[-2:])
        tokens, rope = self.embed(pixels)
        found: dict[int, torch.Tensor] = {}
        for i, x in self.transformer.iter_blocks(tokens, stop=max(wanted), rope=rope):
            if i in wanted:
                found[i] = x
        outs = []
        for i in wanted:
            t = self.ln_post(found[i]) if norm else found[i]
            if drop_cls or output_fmt == "NCHW":
                t = t[:, self.num_prefix_tokens :]
            if output_fmt == "NCHW":
                t = t.transpose(1, 2).reshape(t.shape[0], -1, grid_h, grid_w)
            outs.append(t)
        return outs

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        """``ln_post``, pooling and projection on block output ``(B, T, width)``.

        Attention-pooled models give ``(B, output_dim)``; token models (``pool_type="none"``) return the
        tokens unchanged in shape (after ``ln_post`` and ``proj`` where configured)."""
        x = self.ln_post(x)
        pool = self.config.pool_type
        if pool == "attn":
            x = self.attn_pool(x)
        elif pool == "cls":
            x = x[:, 0]
        elif pool == "avg":
            x = x.mean(dim=1)
        if self.config.output_dim is not None:
            x = x @ self.proj
        return x

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """PE-Core: the pooled, projected embedding ``(B, output_dim)``. PE-Lang / PE-Spatial: the last
        block's tokens ``(B, T, width)``, CLS included, as the reference's ``forward``."""
        return self.forward_head(self.forward_features(pixels))

    # --- surgery --------------------------------------------------------------------------------------

    def truncate(self, layer: int) -> VisionTransformer:
        """Drop every block after ``layer`` (Python-style index), in place; returns ``self``.

        Afterwards ``forward`` pools the output of block ``layer``; this is how PE-Lang was made from PE-Core
        (L keeps 23 of 24 blocks).
        """
        keep = resolve_layer(layer, self.depth) + 1
        self.transformer.resblocks = self.transformer.resblocks[:keep]
        # keep the config truthful for save(): the depth is now ``keep``
        self.config = dataclasses.replace(self.config, depth=keep)
        return self

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.transformer.grad_checkpointing = enable
