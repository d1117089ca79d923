"""The PE-Core text tower: causal transformer over BPE ids, pooled at the end-of-text token.

Parameter names match the reference (``token_embedding``, ``positional_embedding``,
``transformer.resblocks.N.*``, ``ln_final``, ``text_projection``).
"""

from __future__ import annotations

import torch
from torch import nn

from .configs import TextConfig
from .layers import Transformer


def check_token_shape(token_ids: torch.Tensor, context_length: int) -> None:
    """The checks that need no values: ``(B, L)`` integers with ``L <= context_length``."""
    if not isinstance(token_ids, torch.Tensor):
        raise TypeError(f"token_ids must be a torch.Tensor of shape (B, L), got {type(token_ids).__name__}")
    if token_ids.ndim != 2:
        raise ValueError(f"token_ids must have shape (B, L), got {tuple(token_ids.shape)}")
    if token_ids.dtype.is_floating_point or token_ids.dtype == torch.bool:
        raise TypeError(f"token_ids must be integers, got {token_ids.dtype}")
    if token_ids.shape[1] > context_length:
        raise ValueError(f"token_ids have length {token_ids.shape[1]} > context length {context_length}")


def check_token_ids(token_ids: torch.Tensor, vocab_size: int, context_length: int) -> None:
    """Raise a clear error for ids that are not ``(B, L)`` integers in ``[0, vocab_size)``, ``L <= context``."""
    check_token_shape(token_ids, context_length)
    if token_ids.numel():
        lo, hi = int(token_ids.min()), int(token_ids.max())
        if lo < 0 or hi >= vocab_size:
            bad = lo if lo < 0 else hi
            raise ValueError(f"token id {bad} is out of range [0, {vocab_size}) for this text tower")


def trim_after_last_eot(token_ids: torch.Tensor) -> torch.Tensor:
    """``(B, L)`` -> ``(B, L')``: the columns up to the last end-of-text token (the largest id) of any row.

    Under the causal mask with EOT pooling nothing after it can change any row's embedding, so it need not
    be computed: typical prompts are 5-15 tokens of a 32-token context.
    """
    if token_ids.shape[1] <= 1 or token_ids.numel() == 0:
        return token_ids
    return token_ids[:, : int(token_ids.argmax(dim=-1).max()) + 1]


class TextTransformer(nn.Module):
    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        c = self.config = config
        self.token_embedding = nn.Embedding(c.vocab_size, c.width)
        self.positional_embedding = nn.Parameter(0.01 * torch.randn(c.context_length, c.width))
        self.transformer = Transformer(
            c.width, c.depth, c.heads, c.mlp_dim, ls_init_value=c.ls_init_value, eps=c.norm_eps
        )
        self.ln_final = nn.LayerNorm(c.width, eps=c.norm_eps)
        self.text_projection = nn.Parameter(c.width**-0.5 * torch.randn(c.width, c.output_dim))

    @property
    def context_length(self) -> int:
        return self.config.context_length

    def forward_features(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Token features ``(B, L, width)`` after ``ln_final``."""
        seq = token_ids.shape[1]
        x = self.token_embedding(token_ids) + self.positional_embedding[:seq].to(
            self.token_embedding.weight.dtype
        )
        x = self.transformer(x, causal=True)
        return self.ln_final(x)

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Embeddings ``(B, output_dim)`` for ids ``(B, L)``, pooled at each row's largest id (EOT)."""
        if torch.compiler.is_compiling():
            # A compiled graph has static shapes and reads no values: static checks only, no trimming
            # (``CLIP.encode_text`` trims before calling a compiled tower).
            check_token_shape(token_ids, self.config.context_length)
        else:
            check_token_ids(token_ids, self.config.vocab_size, self.config.context_length)
            token_ids = trim_after_last_eot(token_ids)
        eot = token_ids.argmax(dim=-1)
        x = self.forward_features(token_ids)
        pooled = x[torch.arange(x.shape[0], device=x.device), eot]
        return pooled @ self.text_projection

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.transformer.grad_checkpointing = enable
