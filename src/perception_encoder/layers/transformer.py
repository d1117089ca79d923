"""A stack of blocks, with the reference's Python-style ``layer`` index to stop early."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .block import Block


def resolve_layer(layer: int, depth: int) -> int:
    """Turn a Python-style block index (0 = first block, -1 = last) into ``0 .. depth-1``.

    Raises ``IndexError`` naming the valid range when ``layer`` is outside it.
    """
    if not -depth <= layer < depth:
        raise IndexError(f"layer {layer} is out of range for {depth} blocks (valid: {-depth} .. {depth - 1})")
    return layer % depth


class Transformer(nn.Module):
    def __init__(
        self,
        width: int,
        depth: int,
        heads: int,
        mlp_dim: int,
        *,
        ls_init_value: float | None = None,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList(
            Block(width, heads, mlp_dim, ls_init_value=ls_init_value, eps=eps) for _ in range(depth)
        )
        # Activation checkpointing (training): recompute each block in the backward pass.
        self.grad_checkpointing = False

    @property
    def depth(self) -> int:
        return len(self.resblocks)

    def iter_blocks(
        self,
        x: torch.Tensor,
        *,
        stop: int | None = None,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        causal: bool = False,
    ) -> Iterator[tuple[int, torch.Tensor]]:
        """Yield ``(index, hidden state after block index)`` up to block ``stop`` (default: the last)."""
        last = self.depth - 1 if stop is None else stop
        for i, block in enumerate(self.resblocks):
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, rope=rope, causal=causal, use_reentrant=False)
            else:
                x = block(x, rope=rope, causal=causal)
            yield i, x
            if i >= last:
                return

    def forward(
        self,
        x: torch.Tensor,
        *,
        layer: int = -1,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        causal: bool = False,
    ) -> torch.Tensor:
        """Run the blocks up to and including ``layer`` (Python-style index) and return that state."""
        stop = resolve_layer(layer, self.depth)
        for _, x in self.iter_blocks(x, stop=stop, rope=rope, causal=causal):  # noqa: B007, B020
            pass
        return x
