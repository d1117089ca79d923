"""The text tower of PE-AV and PE-A-Frame: transformers' ModernBERT, and the tokenizer shipped with a
checkpoint. transformers is the optional extra ``av`` (``pip install -e ".[av]"``), imported here only.

The text embedding is the first ([CLS]) token of the output of layer ``num_layers`` **before** ModernBERT's
final norm: the reference reads ``hidden_states[nth_text_layer]`` (22 of 28 layers for the released
models), and ModernBERT's hidden states are the layer outputs. (transformers' PE-AV reads its
``last_hidden_state``, which has the final norm applied; configured with ``tie_last_hidden_states=False``
it gives the reference's value.) Only the layers used are built.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .configs import AVTextConfig

#: The reference tokenises with padding to the longest text and truncation at 512 tokens.
MAX_TEXT_TOKENS = 512


def require_transformers(what: str = "PE-AV and PE-A-Frame models") -> Any:
    """The ``transformers`` module, or an ``ImportError`` saying which extra installs it."""
    try:
        import transformers
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            f"{what} need transformers (their text tower is ModernBERT): pip install -e '.[av]'"
        ) from e
    if not hasattr(transformers, "ModernBertModel"):  # pragma: no cover - old transformers
        raise ImportError(f"{what} need transformers >= 4.48 (ModernBERT): pip install -U transformers")
    return transformers


def modernbert_config(config: AVTextConfig) -> Any:
    """transformers' ``ModernBertConfig`` for this tower, set to give the layer outputs before the final
    norm as its last hidden state (``tie_last_hidden_states=False``) unless ``final_norm``."""
    transformers = require_transformers()
    cfg = transformers.ModernBertConfig(**config.modernbert_kwargs())
    cfg.tie_last_hidden_states = config.final_norm
    return cfg


class TextEncoder(nn.Module):
    """token ids ``(B, S)`` and attention mask ``(B, S)`` (1 = token, 0 = padding) -> ``(B, hidden)``."""

    def __init__(self, config: AVTextConfig) -> None:
        super().__init__()
        transformers = require_transformers()
        self.config = config
        self.bert = transformers.ModernBertModel(modernbert_config(config))
        rotary = self.bert.rotary_emb
        if any(b.is_meta for b in rotary.buffers()):
            # built on the meta device (loading): its RoPE tables are derived, not loaded; make them real
            with torch.device("cpu"):
                self.bert.rotary_emb = type(rotary)(config=self.bert.config)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must be (B, S) token ids, got shape {tuple(input_ids.shape)}")
        if self.config.final_norm:
            return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state[:, 0]
        out = self.bert(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        return out.hidden_states[-1][:, 0]  # the last layer's output, before the final norm


class Tokenizer:
    """The checkpoint's own text tokenizer (``tokenizer.json`` and its config, from the snapshot or folder
    beside the weights), called as the reference does: padding to the longest text, truncation at
    ``MAX_TEXT_TOKENS`` tokens. ``tokenizer(texts)`` -> ``(input_ids (B, S), attention_mask (B, S))``.
    Picklable (it holds the folder; the tokenizer is loaded on first use)."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self._tok: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {"folder": self.folder, "_tok": None}

    def _load(self) -> Any:
        if self._tok is None:
            transformers = require_transformers("the PE-AV tokenizer")
            if (
                not (self.folder / "tokenizer.json").is_file()
                and not (self.folder / "tokenizer_config.json").is_file()
            ):
                raise FileNotFoundError(f"no tokenizer files (tokenizer.json) in {self.folder}")
            self._tok = transformers.AutoTokenizer.from_pretrained(str(self.folder))
        return self._tok

    def __call__(self, texts: str | Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts or not all(isinstance(t, str) for t in texts):
            raise ValueError("texts must be a non-empty list of strings")
        out = self._load()(
            texts, return_tensors="pt", padding="longest", truncation=True, max_length=MAX_TEXT_TOKENS
        )
        return out["input_ids"], out["attention_mask"]
