"""Text -> embeddings through a CLIP model's text tower, in fixed-size batches."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ..finite import check_finite
from .encoders import model_device, require_clip

#: Text prompts are encoded in batches of this size whatever the image batch size, so the text side of
#: every metric is the same for any ``batch_size``.
TEXT_BATCH_SIZE = 256


@torch.inference_mode()
def embed_texts(
    model: torch.nn.Module,
    texts: Sequence[str],
    tokenizer: Callable[[list[str]], torch.Tensor] | None = None,
    *,
    batch_size: int = TEXT_BATCH_SIZE,
    normalize: bool = True,
) -> torch.Tensor:
    """Text embeddings ``(T, D)`` (float32, CPU; L2-normalised unless ``normalize=False``); ``tokenizer``
    defaults to the CLIP tokenizer at the model's context length (over-long text is cut, ending in EOT)."""
    require_clip(model, "text embedding")
    if tokenizer is None:
        from ..tokenization import tokenizer as make_tokenizer

        tokenizer = make_tokenizer(model.text.context_length)
    device = model_device(model)
    out = []
    for i in range(0, len(texts), batch_size):
        ids = tokenizer(list(texts[i : i + batch_size])).to(device)
        emb = model.encode_text(ids, normalize=normalize).float().cpu()
        out.append(check_finite(emb, f"the text {texts[i]!r} (or its batch)", model))
    if not out:
        return torch.empty(0, model.embed_dim)
    return torch.cat(out)
