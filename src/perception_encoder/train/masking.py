"""Mask regularisation inputs: which samples of a batch are masked, and masking their patches.

PE masks a small fraction of each batch (about 1/16) and pulls the masked image's embedding toward the
unmasked embedding of the same image with a cosine loss (SPEC §9). Here a masked image is an **extra
copy** of a batch image whose chosen patches have their input pixels replaced by 0 -- the normalised
dataset mean, i.e. mid grey -- before the patch embedding. Zeroing pixels (rather than dropping tokens)
works with every vision config unchanged (CLS or not, RoPE, attention pooling) and keeps each remaining
patch at its own position. The masked copies feed only the cosine loss, not the contrastive loss.

All choices are seeded by ``(run seed, step, micro-batch, slot in the global batch)``, so they do not depend
on the number of processes and repeat exactly after a resume.
"""

from __future__ import annotations

import random

import torch


def masked_slots(global_batch: int, fraction: float, seed: int, step: int, micro: int) -> set[int]:
    """The global-batch positions to mask: ``round(global_batch * fraction)`` of them (at least one when
    ``fraction > 0``), chosen at random per micro-batch."""
    if fraction <= 0:
        return set()
    n = min(global_batch, max(1, round(global_batch * fraction)))
    rng = random.Random(f"mask-slots/{seed}/{step}/{micro}")
    return set(rng.sample(range(global_batch), n))


def mask_patches(pixels: torch.Tensor, patch_size: int, ratio: float, seeds: list[str]) -> torch.Tensor:
    """A copy of ``pixels`` with ``round(ratio * patches)`` random patches per sample set to 0.

    ``pixels``: images ``(m, 3, H, W)`` or clips ``(m, N, 3, H, W)`` (one mask per clip, the same for every
    frame). ``seeds``: one seed per sample. Returns a tensor of the same shape.
    """
    if len(seeds) != pixels.shape[0]:
        raise ValueError(
            f"mask_patches needs one seed per sample: {len(seeds)} seeds, {pixels.shape[0]} samples"
        )
    h, w = pixels.shape[-2] // patch_size, pixels.shape[-1] // patch_size
    total = h * w
    keep = torch.ones((pixels.shape[0], h, w), dtype=pixels.dtype, device=pixels.device)
    count = min(total, max(1, round(ratio * total)))
    for i, seed in enumerate(seeds):
        chosen = random.Random(f"mask-patches/{seed}").sample(range(total), count)
        keep[i].view(-1)[torch.tensor(chosen, device=pixels.device)] = 0
    # patch grid -> pixel grid; pixels beyond the last whole patch are never seen by the model
    full = keep.repeat_interleave(patch_size, dim=1).repeat_interleave(patch_size, dim=2)
    mask = torch.ones(pixels.shape[0], *pixels.shape[-2:], dtype=pixels.dtype, device=pixels.device)
    mask[:, : h * patch_size, : w * patch_size] = full
    shape = (pixels.shape[0],) + (1,) * (pixels.ndim - 3) + mask.shape[1:]
    return pixels * mask.view(shape)
