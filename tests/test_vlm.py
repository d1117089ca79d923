"""PE-Lang in a language model: projector, placeholder expansion and filling, loss, generation, alignment.

Everything is tiny and offline: random-weight Llama / Qwen2 LMs from small configs, tokenizers built with
the ``tokenizers`` library, a PE-Lang-like vision tower (no pooling, no ln_post, LayerScale) at 32 px.
"""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from conftest import randomize, tiny_vision_config

transformers = pytest.importorskip("transformers")
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers  # noqa: E402

from perception_encoder.errors import CheckpointError  # noqa: E402
from perception_encoder.tiling import tile_grid  # noqa: E402
from perception_encoder.vision import VisionTransformer  # noqa: E402
from perception_encoder.vlm import (  # noqa: E402
    ImageItem,
    PLMProjector,
    VideoItem,
    VisionLanguageModel,
    load_plm_projector,
    train_projector,
)

TILE = 32  # tiny tower: 32 px, patch 8 -> 4x4 patches -> 2x2 = 4 tokens per tile after pooling
PER_TILE = 4
WORDS = "a the is on of photo cat dog red blue green yellow white black left right what color".split()


# --- tiny offline tokenizers and LMs ----------------------------------------------------------------------


def word_tokenizer():
    """WordLevel tokenizer that adds BOS, wrapped for transformers."""
    vocab = {w: i for i, w in enumerate(["<pad>", "<s>", "</s>", "<unk>", *WORDS])}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )


def byte_tokenizer():
    """Byte-level BPE trained here on a few sentences (Qwen-style: no BOS, EOS doubles as padding)."""
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tk.train_from_iterator(
        [" ".join(WORDS)] * 4 + ["a red photo of the cat", "what color is the dog"], trainer
    )
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tk, eos_token="<|endoftext|>", pad_token="<|endoftext|>"
    )


def tiny_lm(arch: str, vocab_size: int, seed: int = 0):
    torch.manual_seed(seed)
    common = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        initializer_range=0.3,  # a random LM that reacts to its inputs, so training has signal
    )
    if arch == "llama":
        cfg = transformers.LlamaConfig(pad_token_id=0, bos_token_id=1, eos_token_id=2, **common)
        return transformers.LlamaForCausalLM(cfg).eval()
    cfg = transformers.Qwen2Config(**common)
    return transformers.Qwen2ForCausalLM(cfg).eval()


def tiny_tower(seed: int = 0) -> VisionTransformer:
    cfg = tiny_vision_config(pool_type="none", output_dim=None, use_ln_post=False, ls_init_value=0.1)
    return randomize(VisionTransformer(cfg), seed=seed)


def build(arch: str = "llama", **kwargs) -> VisionLanguageModel:
    tok = word_tokenizer() if arch == "llama" else byte_tokenizer()
    lm = tiny_lm(arch, len(tok))
    torch.manual_seed(1)
    return VisionLanguageModel(tiny_tower(), lm, tok, **kwargs).eval()


def rgb(width: int, height: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def vlm(request):
    return build(request.param, max_tiles=4)


# --- projector --------------------------------------------------------------------------------------------


def _transformers_projector(width: int, hidden: int, ratio: int):
    from transformers.models.perception_lm.modeling_perception_lm import PerceptionLMMultiModalProjector

    cfg = transformers.PerceptionLMConfig(
        vision_config=transformers.TimmWrapperConfig(model_args={"embed_dim": width}),
        text_config=transformers.LlamaConfig(
            hidden_size=hidden,
            num_attention_heads=2,
            num_hidden_layers=1,
            intermediate_size=32,
            vocab_size=16,
        ),
        projector_pooling_ratio=ratio,
    )
    return PerceptionLMMultiModalProjector(cfg).eval()


@pytest.mark.parametrize("ratio", [1, 2, 3])
def test_projector_matches_transformers_perception_lm(ratio):
    theirs = _transformers_projector(48, 40, ratio)
    randomize(theirs, seed=ratio, std=0.2)
    ours = PLMProjector(48, 40, ratio).eval()
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(3, 36, 48)  # 6x6 grid (3x3 windows for ratio 2... and 2x2 for ratio 3)
    with torch.no_grad():
        want, got = theirs(x), ours(x)
    assert got.shape == (3, (6 // ratio) ** 2, 40)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_projector_math_and_non_square_grids():
    proj = randomize(PLMProjector(8, 6, 2), std=0.3)
    x = torch.randn(2, 4 * 6, 8)
    with torch.no_grad():
        mlp = proj.linear_2(F.gelu(proj.linear_1(x), approximate="none"))  # exact GELU
        got = proj(x, grid=(4, 6))
    grid = mlp.reshape(2, 4, 6, 6)
    pooled = grid.reshape(2, 2, 2, 3, 2, 6).mean(dim=(2, 4)).reshape(2, 6, 6)  # 2x2 blocks, row-major
    torch.testing.assert_close(got, pooled, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="square"):
        proj(torch.randn(1, 24, 8))
    with pytest.raises(ValueError, match=r"\(B, N, 8\)"):
        proj(torch.randn(1, 16, 9))


def test_load_plm_projector_from_every_layout(tmp_path):
    src = randomize(PLMProjector(16, 12, 2), std=0.2)
    sd = src.state_dict()
    x = torch.randn(1, 16, 16)
    want = src(x)
    layouts = {
        "model.multi_modal_projector.": lambda k: k,
        "multi_modal_projector.": lambda k: k,
        "vision_projector.projector.": lambda k: k.replace("linear_1", "0").replace("linear_2", "2"),
        "module.": lambda k: k,
    }
    for prefix, rename in layouts.items():
        full = {prefix + rename(k): v for k, v in sd.items()}
        full["model.language_model.embed_tokens.weight"] = torch.zeros(4, 12)  # other weights are ignored
        loaded = load_plm_projector(full)
        assert loaded.pooling_ratio == 2
        torch.testing.assert_close(loaded(x), want, rtol=0, atol=0)
    # a sharded hub folder: config.json gives the pooling ratio, only the projector's shard is read
    from safetensors.torch import save_file

    folder = tmp_path / "plm"
    folder.mkdir()
    save_file(
        {"model.multi_modal_projector." + k: v.contiguous() for k, v in sd.items()}, folder / "s2.safetensors"
    )
    save_file({"lm_head.weight": torch.zeros(3, 3)}, folder / "s1.safetensors")
    weight_map = {"model.multi_modal_projector." + k: "s2.safetensors" for k in sd} | {
        "lm_head.weight": "s1.safetensors"
    }
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (folder / "config.json").write_text(json.dumps({"projector_pooling_ratio": 1}))
    loaded = load_plm_projector(folder)
    assert loaded.pooling_ratio == 1
    torch.testing.assert_close(loaded.linear_1.weight, sd["linear_1.weight"])
    with pytest.raises(CheckpointError, match="no PerceptionLM projector"):
        load_plm_projector({"foo.weight": torch.zeros(2)})
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_plm_projector(tmp_path / "missing.safetensors")


# --- placeholder expansion --------------------------------------------------------------------------------


def test_token_counts_per_image_tile_frame_and_native(vlm):
    p = vlm.processor
    assert p.tokens_per_chunk() == PER_TILE
    img = rgb(70, 50)
    gw, gh = tile_grid(70, 50, 4, TILE)
    b = p("<image>", images=[img])
    assert b["pixel_values"][0].shape == (1 + gw * gh, 3, TILE, TILE)
    assert int((b["input_ids"] == vlm.image_token_id).sum()) == (1 + gw * gh) * PER_TILE
    b = p("<image>", images=[ImageItem(img, max_tiles=1)])
    assert int((b["input_ids"] == vlm.image_token_id).sum()) == PER_TILE
    b = p("<image>", images=[ImageItem(rgb(100, 44), native=True)])
    pix = b["pixel_values"][0]
    assert pix.shape == (1, 3, 48, 96)  # sides rounded to the 16 px pooled-patch unit
    assert int((b["input_ids"] == vlm.image_token_id).sum()) == (48 // 16) * (96 // 16)
    frames = rgb(30, 20 * 40).reshape(40, 20, 30, 3)
    b = p("<video>", videos=[frames])  # 40 frames, capped at 32
    assert b["pixel_values"][0].shape == (32, 3, TILE, TILE)
    assert int((b["input_ids"] == vlm.video_token_id).sum()) == 32 * PER_TILE
    b = p("<video>", videos=[VideoItem([Image.fromarray(f) for f in frames[:5]], max_frames=3)])
    assert int((b["input_ids"] == vlm.video_token_id).sum()) == 3 * PER_TILE
    # each video frame is squashed bicubic to the tile size
    from perception_encoder.transforms import to_normalized_tensor

    want = to_normalized_tensor(Image.fromarray(frames[0]).resize((TILE, TILE), Image.BICUBIC))
    assert torch.equal(b["pixel_values"][0][0], want)


def test_videos_from_files_and_frame_folders(vlm, tmp_path):
    av = pytest.importorskip("av")
    path = tmp_path / "clip.mp4"
    container = av.open(str(path), "w")
    stream = container.add_stream("mpeg4", rate=8)
    stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
    for i in range(8):
        frame = np.full((32, 32, 3), i * 30, dtype=np.uint8)
        for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()
    b = vlm.processor("<video> the", videos=[VideoItem(path, max_frames=4)])
    pix = b["pixel_values"][0]
    assert pix.shape == (4, 3, TILE, TILE) and b["media_types"] == ["video"]
    assert int((b["input_ids"] == vlm.video_token_id).sum()) == 4 * PER_TILE
    assert pix[0].mean() < pix[-1].mean()  # first frame dark, last bright: order kept

    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(5):
        Image.fromarray(rgb(20, 16, seed=i)).save(folder / f"{i:03d}.png")
    b = vlm.processor("<video>", videos=[VideoItem(folder, max_frames=3)])
    from perception_encoder.transforms import to_normalized_tensor

    for got, index in zip(b["pixel_values"][0], (0, 2, 4), strict=True):  # round(i * 4 / 2)
        want = to_normalized_tensor(
            Image.fromarray(rgb(20, 16, seed=index)).resize((TILE, TILE), Image.BICUBIC)
        )
        assert torch.equal(got, want)


def test_processor_errors_name_the_problem(vlm):
    with pytest.raises(ValueError, match="1 <image>.*but 2 images"):
        vlm.processor("<image>", images=[rgb(8, 8), rgb(8, 8)])
    with pytest.raises(ValueError, match="one entry per prompt"):
        vlm.processor(["<image>", "<image>"], images=[[rgb(8, 8)]])
    with pytest.raises(ValueError, match="placeholders"):
        vlm.processor("the", answers="the <image>")


def _mixed_batch(vlm, answers=None):
    frames = rgb(24, 18 * 3, seed=5).reshape(3, 18, 24, 3)
    return vlm.processor(
        ["what color is <image> on <video> the", "<image> the <image>"],
        answers=answers,
        images=[
            [rgb(70, 50, seed=1)],
            [ImageItem(rgb(64, 40, seed=2), native=True), ImageItem(rgb(40, 40, seed=3), max_tiles=1)],
        ],
        videos=[[frames], None],
    )


def _expected_visual_tokens(vlm, pixels: torch.Tensor) -> torch.Tensor:
    """Projector output for one medium computed by hand: last block tokens, CLS dropped, MLP, 2x2 means."""
    proj = vlm.projector
    with torch.no_grad():
        feats = vlm.vision.forward_features(pixels)[:, vlm.vision.num_prefix_tokens :]  # no ln_post
        x = proj.linear_2(F.gelu(proj.linear_1(feats)))
    n, _, d = x.shape
    gh, gw = pixels.shape[-2] // 8, pixels.shape[-1] // 8
    x = x.reshape(n, gh // 2, 2, gw // 2, 2, d).mean(dim=(2, 4))
    return x.reshape(-1, d)


def test_placeholders_are_filled_exactly_once_with_the_projector_output(vlm):
    batch = _mixed_batch(vlm)
    assert batch["media_types"] == ["image", "video", "image", "image"]
    seen = {}

    def hook(module, args, kwargs):
        seen["embeds"] = kwargs["inputs_embeds"].detach().clone()

    handle = vlm.language_model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            vlm(**batch)
    finally:
        handle.remove()
    embeds, ids = seen["embeds"], batch["input_ids"]
    mask = (ids == vlm.image_token_id) | (ids == vlm.video_token_id)
    # text positions keep their token embeddings
    table = vlm.language_model.get_input_embeddings().weight.detach()
    torch.testing.assert_close(embeds[~mask], table[ids[~mask]], rtol=0, atol=0)
    # placeholder positions, in order, hold each medium's projected tokens -- every one filled once
    want = torch.cat([_expected_visual_tokens(vlm, p) for p in batch["pixel_values"]])
    assert int(mask.sum()) == want.shape[0]
    torch.testing.assert_close(embeds[mask], want, rtol=1e-5, atol=1e-5)
    # and the two samples got their own media: sample 1 starts with the native image's tokens
    first = _expected_visual_tokens(vlm, batch["pixel_values"][2])
    row1 = embeds[1][mask[1]]
    torch.testing.assert_close(row1[: first.shape[0]], first, rtol=1e-5, atol=1e-5)


def test_mismatched_media_are_refused(vlm):
    batch = _mixed_batch(vlm)
    with pytest.raises(ValueError, match="placeholders"):
        vlm(batch["input_ids"], pixel_values=batch["pixel_values"][:-1])
    with pytest.raises(ValueError, match="is a video but its placeholders are image"):
        vlm(batch["input_ids"], pixel_values=batch["pixel_values"], media_types=["video"] * 4)
    with pytest.raises(ValueError, match="no pixel_values"):
        vlm(batch["input_ids"])


def test_loss_counts_answer_tokens_only(vlm):
    batch = _mixed_batch(vlm, answers=["red cat", "the blue dog"])
    labels, ids = batch["labels"], batch["input_ids"]
    mask = (ids == vlm.image_token_id) | (ids == vlm.video_token_id)
    assert bool((labels[mask] == -100).all()) and bool((labels[batch["attention_mask"] == 0] == -100).all())
    eos = vlm.tokenizer.eos_token_id
    for row in range(2):
        answer = labels[row][labels[row] != -100].tolist()
        assert answer[-1] == eos and len(answer) >= 2
    with torch.no_grad():
        out = vlm(**batch)
    assert math.isfinite(float(out.loss))
    # the same loss by hand: next-token cross-entropy over labelled positions only
    logits = out.logits[:, :-1].reshape(-1, out.logits.shape[-1])
    manual = F.cross_entropy(logits, labels[:, 1:].reshape(-1), ignore_index=-100)
    torch.testing.assert_close(out.loss, manual, rtol=1e-5, atol=1e-5)


def test_generate_returns_tokens_and_batches_like_single_prompts(vlm):
    prompts = ["what color is <image>", "the <image> is on the <image>"]
    images = [[rgb(40, 30, seed=7)], [rgb(20, 50, seed=8), ImageItem(rgb(30, 30, seed=9), native=True)]]
    batch = vlm.processor(prompts, images=images)
    assert bool((batch["attention_mask"][:, -1] == 1).all())  # left padded for generation
    out = vlm.generate(**batch, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert out.shape == (2, 4) and out.dtype == torch.long
    assert not bool(((out == vlm.image_token_id) | (out == vlm.video_token_id)).any())
    for i in range(2):
        single = vlm.generate(
            **vlm.processor(prompts[i], images=images[i]), max_new_tokens=4, min_new_tokens=4
        )
        assert torch.equal(single[0], out[i])
    text = vlm.answer("what color is <image>", images=[rgb(40, 30, seed=7)], max_new_tokens=3)
    assert isinstance(text, str)


def test_new_placeholders_grow_the_embedding_table():
    tok = word_tokenizer()
    lm = tiny_lm("llama", len(tok))
    model = VisionLanguageModel(tiny_tower(), lm, tok, image_token="<img>", video_token="<vid>")
    assert lm.get_input_embeddings().num_embeddings == len(tok) == len(word_tokenizer()) + 2
    assert tok.convert_ids_to_tokens(model.image_token_id) == "<img>"
    with pytest.raises(ValueError, match="projector maps"):
        VisionLanguageModel(tiny_tower(), tiny_lm("llama", len(tok)), tok, projector=PLMProjector(32, 16))


# --- projector alignment ----------------------------------------------------------------------------------

COLORS = {"red": (230, 20, 20), "blue": (20, 20, 230), "green": (20, 220, 20), "yellow": (240, 240, 20)}


def color_pairs(n_per_color: int = 2):
    rng = np.random.default_rng(0)
    pairs = []
    for name, value in COLORS.items():
        for _ in range(n_per_color):
            img = np.clip(np.array(value) + rng.integers(-15, 15, (TILE, TILE, 3)), 0, 255).astype(np.uint8)
            pairs.append((img, f"a {name} photo"))
    return pairs


def dataset_loss(model, pairs) -> float:
    batch = model.processor(
        ["<image>"] * len(pairs),
        answers=[caption for _, caption in pairs],
        images=[[ImageItem(img, max_tiles=1)] for img, _ in pairs],
    )
    with torch.no_grad():
        return float(model(**batch).loss)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_alignment_trains_only_the_projector_and_the_loss_falls(arch):
    model = build(arch)
    pairs = color_pairs()
    frozen = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("projector.")}
    before = {k: v.clone() for k, v in model.projector.state_dict().items()}
    start_loss = dataset_loss(model, pairs)
    losses = train_projector(model, pairs, steps=20, batch_size=4, lr=5e-2, warmup_steps=2)
    assert len(losses) == 20 and all(math.isfinite(x) for x in losses)
    assert np.mean(losses[-5:]) < np.mean(losses[:3])
    assert dataset_loss(model, pairs) < 0.7 * start_loss
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in frozen.items())
    assert any(not torch.equal(model.projector.state_dict()[k], v) for k, v in before.items())
    assert all(p.requires_grad for p in model.parameters())  # freezing is undone afterwards


def test_alignment_checkpoints_resume_to_the_same_result(tmp_path, caplog):
    base = build("llama")
    data = color_pairs(1)
    data.insert(2, ("/nonexistent/image.png", "a lost photo"))  # a bad item: skipped, its batch still trains
    kw = dict(batch_size=2, lr=1e-2, warmup_steps=1, checkpoint_every=2, seed=3)

    straight = copy.deepcopy(base)
    want = train_projector(straight, data, steps=6, checkpoint_dir=tmp_path / "a", **kw)
    assert "skipping item 2" in caplog.text

    class Interrupted(Exception):
        pass

    def stop_at_3(step, loss):
        if step == 3:
            raise Interrupted

    interrupted = copy.deepcopy(base)
    with pytest.raises(Interrupted):  # killed after step 3; the last checkpoint is from step 2
        train_projector(interrupted, data, steps=6, checkpoint_dir=tmp_path / "b", callback=stop_at_3, **kw)
    assert all(p.requires_grad for p in interrupted.parameters())
    state = torch.load(tmp_path / "b" / "projector_align.pt", weights_only=True)
    assert state["step"] == 2 and len(state["losses"]) == 2 and state["optimizer"]["state"]
    fresh = copy.deepcopy(base)  # a new process: the projector comes from the checkpoint
    got = train_projector(fresh, data, steps=6, checkpoint_dir=tmp_path / "b", **kw)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    for k, v in straight.projector.state_dict().items():
        torch.testing.assert_close(fresh.projector.state_dict()[k], v, rtol=1e-5, atol=1e-6)
    # a finished run resumes to nothing more
    again = copy.deepcopy(base)
    assert train_projector(again, data, steps=6, checkpoint_dir=tmp_path / "b", **kw) == got
    # the final projector file loads back into a model
    other = copy.deepcopy(base)
    other.load_projector(tmp_path / "b" / "projector.safetensors")
    torch.testing.assert_close(other.projector.linear_2.bias, fresh.projector.linear_2.bias)


def test_alignment_rejects_bad_arguments():
    model = build("llama")
    with pytest.raises(ValueError, match="exactly once"):
        train_projector(model, color_pairs(), steps=1, prompt="no image here")
    with pytest.raises(ValueError, match="empty"):
        train_projector(model, [], steps=1)


def test_video_frame_indices_follow_perception_lms_loader():
    """Candidates every round(fps / 1) frames; more than max -> max of them at round(i * (m-1) / (n-1));
    fewer -> that rule over all frames with min(T, max) frames (never a repeat); as many -> all."""
    from perception_encoder.vlm.processor import video_frame_indices

    # 10 s at 30 fps: 10 candidates < 32 -> 32 of the 300 frames, rounded to nearest (2.5 -> 2, as Python)
    got = video_frame_indices(300, 32, fps=30)
    assert len(got) == 32 and got[:4] == [0, 10, 19, 29] and got[-1] == 299 and len(set(got)) == 32
    # 100 s at 30 fps: 100 candidates > 32 -> 32 of the candidates
    got = video_frame_indices(3000, 32, fps=30)
    assert all(i % 30 == 0 for i in got) and got[0] == 0 and got[-1] == 2970 and len(got) == 32
    assert got[:3] == [0, 90, 180]  # candidates 0, 3 (round(3.19)), 6 (round(6.39))
    # exactly 32 candidates: all of them
    assert video_frame_indices(960, 32, fps=30) == list(range(0, 960, 30))
    # a clip shorter than max_frames: each frame once, no repeats
    assert video_frame_indices(5, 32, fps=30) == [0, 1, 2, 3, 4]
    # round half to even, as Python's round: stride 2.5 -> 0, 2, 5
    assert video_frame_indices(6, 3) == [0, 2, 5]
    # frames given without a rate: every frame is a candidate
    assert video_frame_indices(40, 32) == [round(i * 39 / 31) for i in range(32)]
    assert video_frame_indices(1, 32, fps=25.0) == [0]
    assert video_frame_indices(100, 4, fps=0.4) == [0, 33, 66, 99]  # a rate below 1 fps: stride 1
    for bad in [(0, 4), (4, 0), (True, 4)]:
        with pytest.raises(ValueError):
            video_frame_indices(*bad)


def test_video_files_are_sampled_one_candidate_per_second(tmp_path):
    av = pytest.importorskip("av")
    from perception_encoder.video import load_frames, video_info
    from perception_encoder.vlm.processor import video_frame_indices

    path = tmp_path / "clip.mp4"  # 30 frames at 10 fps: frame i has grey level 8 * i
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        if stream.codec_context.name == "libx264":
            stream.options = {"crf": "0"}
        for i in range(30):
            frame = np.full((32, 32, 3), 8 * i, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    info = video_info(path)
    assert (info.frames, info.fps) == (30, 10.0)
    for max_frames, want in [(2, [0, 20]), (3, [0, 10, 20]), (4, [0, 10, 19, 29]), (32, list(range(30)))]:
        frames = load_frames(path, lambda total, m=max_frames: video_frame_indices(total, m, info.fps))
        assert [round(float(f[..., 0].float().mean()) / 8) for f in frames] == want, max_frames


def test_decoded_video_frames_are_resized_as_perception_lm_does():
    """Decoded video (a file, an array, a tensor) goes through torchvision's uint8 tensor resize, bicubic
    with antialiasing, then /255 and the normalisation (PerceptionLM's video transform); frames given as
    images keep Pillow's bicubic. The two differ by up to ~0.1 after normalisation."""
    tvf = pytest.importorskip("torchvision.transforms.functional")
    from perception_encoder.transforms import resize_frames
    from perception_encoder.vlm.processor import VLMProcessor

    frames = np.stack([rgb(70, 50, seed=i) for i in range(3)])  # (T, H, W, 3), downscale to 32 and upscale
    for size in (32, 96):
        want = tvf.resize(
            torch.from_numpy(frames).permute(0, 3, 1, 2),
            [size, size],
            tvf.InterpolationMode.BICUBIC,
            antialias=True,
        )
        assert torch.equal(resize_frames(torch.from_numpy(frames).permute(0, 3, 1, 2), (size, size)), want)

    processor = VLMProcessor(_StubTokenizer(), patch_size=8, tile_size=TILE, max_frames=8)
    want = tvf.resize(
        torch.from_numpy(frames).permute(0, 3, 1, 2), [TILE, TILE], tvf.InterpolationMode.BICUBIC
    )
    want = tvf.normalize(want.float() / 255.0, [0.5] * 3, [0.5] * 3)
    for video in (frames, torch.from_numpy(frames), torch.from_numpy(frames).permute(0, 3, 1, 2)):
        assert torch.equal(processor.prepare_video(video), want)
    pil = processor.prepare_video([Image.fromarray(f) for f in frames])
    assert 0 < (pil - want).abs().max() < 0.2


class _StubTokenizer:
    """Just enough of a transformers tokenizer for VLMProcessor's constructor (no language model needed)."""

    def __init__(self) -> None:
        self.added: dict[str, int] = {}

    def get_added_vocab(self) -> dict[str, int]:
        return self.added

    def add_tokens(self, tokens, special_tokens=False) -> None:
        for t in tokens:
            self.added.setdefault(str(t), 1000 + len(self.added))

    def convert_tokens_to_ids(self, token: str) -> int:
        return self.added[token]

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        return {"input_ids": [self.added[text]] if text in self.added else [0]}
