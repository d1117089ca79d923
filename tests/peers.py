"""Peer models (timm, open_clip) loaded with our weights, as numerical references. Tests only."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from perception_encoder.configs import CLIPConfig, VisionConfig

# timm's name for each released vision config (the -Tiling twins share their base's architecture)
TIMM_NAMES = {
    "PE-Core-T16-384": "vit_pe_core_tiny_patch16_384",
    "PE-Core-S16-384": "vit_pe_core_small_patch16_384",
    "PE-Core-B16-224": "vit_pe_core_base_patch16_224",
    "PE-Core-L14-336": "vit_pe_core_large_patch14_336",
    "PE-Core-G14-448": "vit_pe_core_gigantic_patch14_448",
    "PE-Lang-L14-448": "vit_pe_lang_large_patch14_448",
    "PE-Lang-G14-448": "vit_pe_lang_gigantic_patch14_448",
    "PE-Lang-L14-448-Tiling": "vit_pe_lang_large_patch14_448",
    "PE-Lang-G14-448-Tiling": "vit_pe_lang_gigantic_patch14_448",
    "PE-Spatial-G14-448": "vit_pe_spatial_gigantic_patch14_448",
    "PE-Spatial-L14-448": "vit_pe_spatial_large_patch14_448",
    "PE-Spatial-B16-512": "vit_pe_spatial_base_patch16_512",
    "PE-Spatial-S16-512": "vit_pe_spatial_small_patch16_512",
    "PE-Spatial-T16-512": "vit_pe_spatial_tiny_patch16_512",
}


def _resized_pos_embed(visual, grid: tuple[int, int]) -> torch.Tensor:
    """The reference's bilinear (align_corners=False) resize of the patch position embedding, CLS kept."""
    pos = visual.positional_embedding.detach()
    n = visual.config.grid_size
    k = visual.num_prefix_tokens
    patch = pos[k:].reshape(1, n, n, -1).permute(0, 3, 1, 2)
    patch = F.interpolate(patch, size=grid, mode="bilinear", align_corners=False)
    return torch.cat([pos[:k], patch.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], -1)])


def timm_vision(name: str, visual, image_hw: tuple[int, int] | None = None):
    """A timm PE tower with ``visual``'s weights.

    At a non-native ``image_hw``, timm is built for that size with ``ref_feat_shape`` equal to the grid and a
    bilinearly pre-resized position embedding: that reproduces the reference release's semantics there
    (integer RoPE positions, bilinear position embedding), unlike timm's own rescaling.
    """
    import timm
    from timm.models.eva import checkpoint_filter_fn

    cfg: VisionConfig = visual.config
    p = cfg.patch_size
    kwargs = dict(pretrained=False, depth=cfg.depth, num_classes=cfg.output_dim or 0)
    sd = {k: v.detach().clone() for k, v in visual.state_dict().items()}
    if image_hw is not None:
        grid = (image_hw[0] // p, image_hw[1] // p)
        kwargs.update(img_size=image_hw, ref_feat_shape=grid)
        sd["positional_embedding"] = _resized_pos_embed(visual, grid)
    model = timm.create_model(TIMM_NAMES[name], **kwargs).eval()
    model.load_state_dict(checkpoint_filter_fn(sd, model), strict=True)
    return model


def open_clip_skeleton(config: CLIPConfig, vision_timm_name: str):
    """open_clip's PE-Core model for ``config`` (text depth from the config, its timm trunk cut to the vision
    depth), with open_clip's own random weights."""
    import open_clip
    from open_clip import factory

    name = f"_test_{vision_timm_name}_{config.text.width}_{config.text.depth}"
    factory._MODEL_CONFIGS.setdefault(
        name,
        {
            "embed_dim": config.text.output_dim,
            "vision_cfg": {
                "image_size": config.vision.image_size,
                "timm_model_name": vision_timm_name,
                "timm_model_pretrained": False,
                "timm_pool": "map",
                "timm_proj": None,
            },
            "text_cfg": {
                "context_length": config.text.context_length,
                "vocab_size": config.text.vocab_size,
                "width": config.text.width,
                "heads": config.text.heads,
                "layers": config.text.depth,
            },
            "custom_text": True,
        },
    )
    model = open_clip.create_model(name, pretrained=None).eval()
    model.visual.trunk.blocks = model.visual.trunk.blocks[: config.vision.depth]
    return model


def open_clip_model(config: CLIPConfig, clip, vision_timm_name: str):
    """An open_clip PE-Core model with ``clip``'s weights (text depth and vision tower taken from ``clip``)."""
    from timm.models.eva import checkpoint_filter_fn

    model = open_clip_skeleton(config, vision_timm_name)
    trunk = model.visual.trunk
    sd = {"logit_scale": clip.logit_scale.detach().clone()}
    vis = {k: v.detach().clone() for k, v in clip.visual.state_dict().items()}
    for k, v in checkpoint_filter_fn(vis, trunk).items():
        sd[f"visual.trunk.{k}"] = v
    for k, v in clip.text.state_dict().items():
        sd[f"text.{k}"] = v.detach().clone()
    missing, unexpected = model.load_state_dict(sd, strict=False)
    assert not unexpected, unexpected
    assert all("attn_mask" in k for k in missing), missing
    return model
