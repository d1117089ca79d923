"""The CLIP model (vision + text towers) against open_clip's PE-Core models with the same weights."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from conftest import randomize, rel_err, released_config, tiny_clip_config
from peers import open_clip_model
from perception_encoder.clip import CLIP
from perception_encoder.configs import CLIPConfig
from perception_encoder.text import TextTransformer

TOL = 1e-5


def _ids(batch: int, context: int, seed: int = 0) -> torch.Tensor:
    """Token rows of varied lengths: SOT, random ids, EOT, zero padding (one row fills the context)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.zeros(batch, context, dtype=torch.long)
    for i in range(batch):
        n = context if i == 0 else int(torch.randint(2, context, (1,), generator=g))
        ids[i, 0] = 49406
        ids[i, 1 : n - 1] = torch.randint(1, 49406, (n - 2,), generator=g)
        ids[i, n - 1] = 49407
    return ids


def test_pe_core_t_full_size_matches_open_clip():
    config = released_config("PE-Core-T16-384")
    ours = randomize(CLIP(config), seed=1)
    peer = open_clip_model(config, ours, "vit_pe_core_tiny_patch16_384")
    x = torch.randn(2, 3, 384, 384, generator=torch.Generator().manual_seed(0))
    ids = _ids(4, 32)
    with torch.no_grad():
        assert rel_err(ours.encode_image(x), peer.encode_image(x)) <= TOL
        assert rel_err(ours.encode_text(ids), peer.encode_text(ids)) <= TOL
        img, txt, scale = ours(x, ids)
        p_img, p_txt, p_scale = peer(x, ids)[:3]
    assert rel_err(img, p_img) <= TOL and rel_err(txt, p_txt) <= TOL
    assert torch.allclose(scale, p_scale)
    assert torch.allclose(img.norm(dim=-1), torch.ones(2))


@pytest.mark.parametrize("name", ["PE-Core-S16-384", "PE-Core-B16-224", "PE-Core-L14-336", "PE-Core-G14-448"])
def test_text_towers_match_open_clip(name):
    """Every released text tower (cut to 2 blocks) beside a 1-block tiny vision tower projecting to the same
    width (the released vision towers are checked against timm in test_vision)."""
    text = released_config(name, text_depth=2).text
    vision = dataclasses.replace(
        released_config("PE-Core-T16-384").vision, depth=1, output_dim=text.output_dim
    )
    config = CLIPConfig(vision=vision, text=text)
    ours = randomize(CLIP(config), seed=2)
    peer = open_clip_model(config, ours, "vit_pe_core_tiny_patch16_384")
    ids = _ids(5, text.context_length, seed=3)
    x = torch.randn(1, 3, 384, 384)
    with torch.no_grad():
        assert rel_err(ours.encode_text(ids), peer.encode_text(ids)) <= TOL
        assert rel_err(ours.encode_image(x), peer.encode_image(x)) <= TOL


def test_text_ignores_tokens_after_last_eot(tiny_clip):
    """Causal mask + EOT pooling: trimming the batch to the last EOT changes nothing, and rows are
    independent of each other."""
    ids = _ids(3, 16, seed=4)
    ids[0] = 0
    ids[0, :4] = torch.tensor([49406, 10, 11, 49407])  # the longest row is now shorter than the context
    with torch.no_grad():
        batch = tiny_clip.encode_text(ids)
        full = tiny_clip.text.forward_features(ids)
        eot = ids.argmax(-1)
        reference = full[torch.arange(3), eot] @ tiny_clip.text.text_projection
        singles = torch.cat([tiny_clip.encode_text(ids[i : i + 1]) for i in range(3)])
    assert rel_err(batch, reference) <= TOL
    assert rel_err(singles, batch) <= TOL


def test_encode_video_is_mean_of_frames(tiny_clip):
    frames = torch.randn(2, 3, 3, 32, 32)
    with torch.no_grad():
        video = tiny_clip.encode_video(frames)
        per_frame = tiny_clip.encode_image(frames.flatten(0, 1)).view(2, 3, -1)
        normed = tiny_clip.encode_video(frames, normalize=True)
    assert video.shape == (2, 16)
    assert torch.allclose(video, per_frame.mean(1), atol=1e-6)
    assert torch.allclose(normed, F.normalize(per_frame, dim=-1).mean(1), atol=1e-6)
    with pytest.raises(ValueError, match=r"\(B, N, 3, H, W\)"):
        tiny_clip.encode_video(torch.randn(2, 3, 32, 32))


def test_token_id_errors(tiny_clip):
    with pytest.raises(ValueError, match="token id 49408 is out of range"):
        tiny_clip.encode_text(torch.tensor([[49406, 49408]]))
    with pytest.raises(ValueError, match="token id -1 is out of range"):
        tiny_clip.encode_text(torch.tensor([[49406, -1]]))
    with pytest.raises(ValueError, match="length 17 > context length 16"):
        tiny_clip.encode_text(torch.zeros(1, 17, dtype=torch.long))
    with pytest.raises(TypeError, match="integers"):
        tiny_clip.encode_text(torch.zeros(1, 4))
    with pytest.raises(ValueError, match=r"\(B, L\)"):
        tiny_clip.encode_text(torch.zeros(4, dtype=torch.long))


def test_one_block_serves_both_towers(tiny_clip):
    assert type(tiny_clip.visual.transformer.resblocks[0]) is type(tiny_clip.text.transformer.resblocks[0])
    assert isinstance(tiny_clip.text, TextTransformer)


def test_zero_shot_classifier_follows_the_convention(tiny_clip):
    from perception_encoder.zeroshot import zero_shot_classifier, zero_shot_probs

    def tok(texts):
        # a stand-in tokenizer: distinct ids per prompt, SOT ... EOT
        out = torch.zeros(len(texts), 16, dtype=torch.long)
        for i, t in enumerate(texts):
            codes = [1 + (ord(c) % 400) for c in t][:14]
            out[i, : len(codes) + 2] = torch.tensor([49406, *codes, 49407])
        return out

    classes, templates = ["cat", "dog", "car"], ["a {}.", "the {}!"]
    clf = zero_shot_classifier(tiny_clip, classes, templates, tok)
    assert clf.shape == (16, 3)
    with torch.no_grad():
        manual = []
        for c in classes:
            e = tiny_clip.encode_text(tok([t.format(c) for t in templates]), normalize=True).mean(0)
            manual.append(F.normalize(e, dim=-1))
    assert torch.allclose(clf, torch.stack(manual, 1), atol=1e-6)
    with torch.no_grad():
        probs = zero_shot_probs(tiny_clip.encode_image(torch.randn(4, 3, 32, 32)), clf)
    assert probs.shape == (4, 3) and torch.allclose(probs.sum(-1), torch.ones(4))
    with pytest.raises(ValueError, match="at least one class"):
        zero_shot_classifier(tiny_clip, [], templates, tok)


def test_custom_config_round_trip():
    from perception_encoder.configs import config_from_dict, config_to_dict

    cfg = tiny_clip_config()
    assert config_from_dict(config_to_dict(cfg)) == cfg
    assert config_from_dict(config_to_dict(cfg.vision)) == cfg.vision
