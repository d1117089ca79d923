"""Losses: the CLIP softmax (InfoNCE) loss over the global batch, and the mask-regularisation cosine loss.

Across processes: every rank all-gathers the normalised embeddings of every rank (sizes may differ when
bad samples were dropped; they are padded for the collective and cut again), puts its **own** local
tensors back in its slot so gradients flow through them, and computes the loss of the full global
``N x N`` similarity matrix. Summed over ranks, those local gradients are exactly the gradient of the
global-batch loss; the trainer multiplies the loss by the world size before ``backward`` so that DDP's
gradient *averaging* yields that sum, and ``logit_scale`` (whose gradient every rank computes in full) is
fed in through ``scale_grad(…, 1/world)`` so it is not counted ``world`` times. A run on 2 processes
therefore takes the same steps as a run on one process with the same global batch.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from .distributed import DistInfo


def scale_grad(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Identity in the forward pass; multiplies the gradient by ``factor`` in the backward pass."""
    if factor == 1.0:
        return x
    return x * factor + (x * (1.0 - factor)).detach()


def gather_with_local_grad(x: torch.Tensor, info: DistInfo) -> tuple[torch.Tensor, int]:
    """All ranks' rows of ``x`` ``(b_r, D)`` concatenated in rank order -> ``(sum b_r, D)`` and the offset
    of this rank's rows. Other ranks' rows carry no gradient; this rank's rows are ``x`` itself."""
    if info.world_size == 1:
        return x, 0
    sizes_t = torch.tensor([x.shape[0]], device=x.device)
    all_sizes = [torch.zeros_like(sizes_t) for _ in range(info.world_size)]
    dist.all_gather(all_sizes, sizes_t)
    sizes = [int(s.item()) for s in all_sizes]
    padded = torch.zeros((max(sizes), *x.shape[1:]), dtype=x.dtype, device=x.device)
    padded[: x.shape[0]] = x.detach()
    parts = [torch.zeros_like(padded) for _ in range(info.world_size)]
    dist.all_gather(parts, padded)
    pieces = [x if r == info.rank else parts[r][: sizes[r]] for r in range(info.world_size)]
    return torch.cat(pieces), sum(sizes[: info.rank])


def clip_loss(
    image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor, info: DistInfo | None = None
) -> torch.Tensor:
    """Symmetric cross-entropy over the global batch.

    ``image_emb``, ``text_emb``: this rank's **normalised** embeddings ``(b, D)``, row i of each a pair.
    ``logit_scale``: the log inverse temperature (a scalar; ``exp`` is taken here). Returns the mean of the
    image->text and text->image losses over all ``N`` pairs of the global batch (a scalar, equal on every
    rank).
    """
    info = info or DistInfo()
    img, _ = gather_with_local_grad(image_emb, info)
    txt, _ = gather_with_local_grad(text_emb, info)
    scale = scale_grad(logit_scale, 1.0 / info.world_size).exp()
    logits = scale * img @ txt.T  # (N, N), row i: image i against every caption
    labels = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))


def mask_consistency_loss(masked_emb: torch.Tensor, target_emb: torch.Tensor, count: int) -> torch.Tensor:
    """``sum(1 - cos(masked_i, target_i)) / count`` with the target detached (stop-gradient).

    ``masked_emb``, ``target_emb``: ``(m, D)`` this rank's masked and unmasked embeddings of the same
    images; ``count``: the number of masked images in the **global** batch, so that summing the ranks'
    values gives the global mean.
    """
    if masked_emb.shape[0] == 0 or count == 0:
        return masked_emb.sum() * 0.0
    cos = F.cosine_similarity(masked_emb.float(), target_emb.detach().float(), dim=-1)
    return (1.0 - cos).sum() / count
