"""Small building blocks shared by the vision and text towers."""

from .attention import Attention
from .block import Block
from .layer_scale import LayerScale
from .mlp import MLP
from .pooling import AttentionPool
from .rope import apply_rope_2d, rope_2d_tables
from .transformer import Transformer

__all__ = [
    "MLP",
    "Attention",
    "AttentionPool",
    "Block",
    "LayerScale",
    "Transformer",
    "apply_rope_2d",
    "rope_2d_tables",
]
