"""The fast inference paths compute what the plain formulas compute: fused oneDNN linears, RoPE as one
complex multiply, attention on strided views, the patch embedding as one product, EOT trimming; bf16;
torch.compile without graph breaks; several threads sharing one model. Timings live in benchmarks/."""

from __future__ import annotations

import threading

import pytest
import torch
import torch.nn.functional as F

from conftest import randomize, rel_err, released_config, tiny_clip_config, tiny_vision_config, token_ids
from perception_encoder.clip import CLIP
from perception_encoder.factory import create_model, load, save
from perception_encoder.layers import Attention, apply_rope_2d, rope_2d_tables
from perception_encoder.layers import linear as linear_mod
from perception_encoder.layers.linear import linear, onednn_linear_enabled, set_onednn_linear
from perception_encoder.layers.rope import rotate_pairs
from perception_encoder.text import trim_after_last_eot
from perception_encoder.vision import VisionTransformer


def needs_onednn(*, packing: bool = False, dtype: torch.dtype = torch.float32) -> pytest.MarkDecorator:
    """Skip where oneDNN's fused linear (with packed weights, in ``dtype``) is not used: on ARM, PyTorch
    without oneDNN, or an op that failed its probe, the "fused" path is F.linear compared with itself."""
    support = linear_mod._supported()
    ok = onednn_linear_enabled() and (support.packing or not packing)
    ok = ok and {torch.bfloat16: support.bf16, torch.float16: support.fp16}.get(dtype, True)
    what = "packed weights" if packing else "linear"
    return pytest.mark.skipif(not ok, reason=f"no oneDNN {what} in {dtype} here")


@pytest.fixture
def plain_linear():
    """Run a block of code with the oneDNN path off, then restore it."""
    before = linear_mod._ENABLED
    set_onednn_linear(False)
    yield
    set_onednn_linear(before)


# --- linear ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-6), (torch.bfloat16, 1e-2)])
def test_fused_linear_matches_the_formula(dtype, tol):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 7, 48, generator=g).to(dtype)
    w = torch.randn(96, 48, generator=g).to(dtype) * 0.1
    b = torch.randn(96, generator=g).to(dtype)
    w2 = torch.randn(48, 96, generator=g).to(dtype) * 0.1
    r = torch.randn(3, 7, 48, generator=g).to(dtype)
    with torch.inference_mode():
        ref = F.linear(x.float(), w.float(), b.float())
        assert rel_err(linear(x, w, b), ref) <= tol
        assert rel_err(linear(x, w, b, gelu=True), F.gelu(ref)) <= tol
        h = F.gelu(ref).to(dtype)
        assert rel_err(linear(h, w2, None, residual=r), r.float() + F.linear(h.float(), w2.float())) <= tol
        # a transposed (non-contiguous) weight takes the plain path and stays correct
        wt = torch.randn(48, 96, generator=g).to(dtype).t()
        assert rel_err(linear(x, wt, b), F.linear(x.float(), wt.float(), b.float())) <= tol
    with pytest.raises(ValueError, match="cannot be combined"):
        linear(x, w, b, gelu=True, residual=r)


def test_fused_linear_keeps_gradients():
    """With gradients needed, the plain differentiable path runs: same values, correct gradients."""
    x = torch.randn(5, 16, requires_grad=True)
    w = torch.randn(8, 16, requires_grad=True)
    b = torch.randn(8, requires_grad=True)
    r = torch.randn(5, 8)
    out = linear(x, w, b, residual=r)
    assert out.grad_fn is not None
    out.sum().backward()
    assert torch.allclose(x.grad, w.detach().sum(0).expand(5, 16), atol=1e-5)
    assert torch.allclose(b.grad, torch.full((8,), 5.0))


@needs_onednn()
def test_plain_and_fused_paths_give_the_same_model_outputs(plain_linear):
    model = randomize(CLIP(tiny_clip_config()))
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    ids = token_ids(2, 16, [5, 9])
    with torch.inference_mode():
        img_plain, txt_plain = model.encode_image(x), model.encode_text(ids)
        set_onednn_linear(True)
        img, txt = model.encode_image(x), model.encode_text(ids)
    assert rel_err(img, img_plain) <= 1e-6
    assert rel_err(txt, txt_plain) <= 1e-6


@pytest.mark.parametrize(
    "dtype, tol",
    [
        pytest.param(torch.float32, 1e-6, marks=needs_onednn(packing=True)),
        pytest.param(torch.bfloat16, 1e-2, marks=needs_onednn(packing=True, dtype=torch.bfloat16)),
    ],
)
def test_packed_weights_all(dtype, tol):
    """Packed copies give the same products, follow in-place changes and die with their weight."""
    g = torch.Generator().manual_seed(1)
    w = torch.randn(64, 32, generator=g).to(dtype)
    b = torch.randn(64, generator=g).to(dtype)
    linear_mod.clear_packed_weights()
    before = linear_mod.weight_packing_mode()
    with torch.inference_mode(), linear_mod.weight_packing("all"):
        for rows in (1, 9, 300):  # packed for the first call's row count, right for every other
            x = torch.randn(rows, 32, generator=g).to(dtype)
            assert rel_err(linear(x, w, b), F.linear(x.float(), w.float(), b.float())) <= tol
        assert linear_mod.packed_weight_bytes() == w.numel() * w.element_size()
        w.mul_(-1)  # changed in place: packed again
        assert rel_err(linear(x, w, b), F.linear(x.float(), w.float(), b.float())) <= tol
        r = torch.randn(rows, 64, generator=g).to(dtype)
        assert (
            rel_err(linear(x, w, b, residual=r), r.float() + F.linear(x.float(), w.float(), b.float())) <= tol
        )
    assert linear_mod.weight_packing_mode() == before  # the context manager restored the switch
    del w
    assert linear_mod.packed_weight_bytes() == 0


@needs_onednn(packing=True)
def test_packed_model_outputs_match():
    model = randomize(CLIP(tiny_clip_config()))
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    ids = token_ids(2, 16, [6, 4])
    with torch.inference_mode():
        want_img, want_txt = model.encode_image(x), model.encode_text(ids)
        with linear_mod.weight_packing():
            img, txt = model.encode_image(x), model.encode_text(ids)
    assert rel_err(img, want_img) <= 1e-6
    assert rel_err(txt, want_txt) <= 1e-6
    del model
    linear_mod.clear_packed_weights()


def test_onednn_is_used_on_this_cpu():
    """The benchmarks' figures assume the fused path; say so loudly if this build lacks it."""
    if not torch.backends.mkldnn.is_available() or not linear_mod._X86:
        pytest.skip("PyTorch built without oneDNN, or not an x86-64 CPU (where it is not used)")
    if not linear_mod._ENABLED:
        pytest.skip("switched off (PE_ONEDNN_LINEAR=0)")
    assert onednn_linear_enabled()


# --- RoPE, attention, patch embedding ---------------------------------------------------------------------


def _rope_formula(x, cos, sin):
    a, b = x.float().unflatten(-1, (-1, 2)).unbind(-1)
    return torch.stack((a * cos - b * sin, b * cos + a * sin), dim=-1).flatten(-2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_complex_rope_equals_the_formula(dtype):
    cos, sin = rope_2d_tables(3, 5, 16, cls_token=True)
    x = torch.randn(2, 4, 16, 16).to(dtype)
    got = apply_rope_2d(x, cos, sin)
    assert got.dtype == dtype
    assert torch.equal(got, _rope_formula(x, cos, sin).to(dtype))
    # a strided view (q and k of a fused projection) and a view the complex path cannot take
    qkv = torch.randn(2, 16, 3, 4, 16).to(dtype)
    view = qkv[:, :, :2]
    assert torch.equal(
        rotate_pairs(view, cos[:, None, None], sin[:, None, None]),
        _rope_formula(view, cos[:, None, None], sin[:, None, None]).to(dtype),
    )
    odd = torch.randn(2 * 4 * 16 * 16 + 1)[1:].view(2, 4, 16, 16).to(dtype)
    assert torch.equal(apply_rope_2d(odd, cos, sin), _rope_formula(odd, cos, sin).to(dtype))


def _reference_attention(attn: Attention, x, rope, causal):
    """Textbook multi-head attention with separate q, k, v copies and an explicit softmax."""
    q, k, v = F.linear(x, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    q, k, v = (t.unflatten(-1, (attn.heads, attn.head_dim)).transpose(1, 2) for t in (q, k, v))
    if rope is not None:
        q, k = _rope_formula(q, *rope), _rope_formula(k, *rope)
    scores = q @ k.transpose(-1, -2) * attn.head_dim**-0.5
    if causal:
        n = x.shape[1]
        scores = scores.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
    out = scores.softmax(-1) @ v
    return F.linear(out.transpose(1, 2).flatten(2), attn.out_proj.weight, attn.out_proj.bias)


@pytest.mark.parametrize("causal", [False, True])
def test_attention_without_layout_copies_matches_the_textbook(causal):
    torch.manual_seed(0)
    attn = randomize(Attention(32, 4))
    x = torch.randn(2, 13, 32)
    rope = None if causal else rope_2d_tables(3, 4, 8, cls_token=True)
    res = torch.randn(2, 13, 32)
    with torch.inference_mode():
        want = _reference_attention(attn, x, rope, causal)
        assert rel_err(attn(x, rope=rope, causal=causal), want) <= 1e-6
        assert rel_err(attn(x, rope=rope, causal=causal, residual=res), want + res) <= 1e-6
        kv = torch.randn(2, 9, 32)
        with pytest.raises(ValueError, match="self-attention only"):
            attn(x[:, :1], kv=kv, rope=rope_2d_tables(3, 3, 8, cls_token=False))


def test_patch_embedding_product_equals_the_convolution():
    model = randomize(VisionTransformer(tiny_vision_config()))
    x = torch.randn(2, 3, 37, 45)  # not whole patches: the convolution drops the remainder, so must we
    with torch.inference_mode():
        want = model.conv1(x).flatten(2).transpose(1, 2)
        got = model._patch_tokens(x, 37 // 8, 45 // 8)
    assert rel_err(got, want) <= 1e-6


def test_layer_scale_blocks_take_the_unfused_residual():
    cfg = tiny_vision_config(ls_init_value=0.1, pool_type="none", output_dim=None, use_ln_post=False)
    model = randomize(VisionTransformer(cfg))
    assert not model.transformer.resblocks[0].fused_residual
    assert randomize(VisionTransformer(tiny_vision_config())).transformer.resblocks[0].fused_residual
    with torch.inference_mode():
        x = torch.randn(1, 3, 32, 32)
        blk = model.transformer.resblocks[0]
        t, rope = model.embed(x)
        want = t + blk.ls_1(blk.attn(blk.ln_1(t), rope=rope))
        want = want + blk.ls_2(blk.mlp(blk.ln_2(want)))
        assert rel_err(blk(t, rope=rope), want) <= 1e-6


# --- text trimming ---------------------------------------------------------------------------------------


def test_trim_after_last_eot():
    ids = token_ids(3, 16, [4, 7, 5])
    assert trim_after_last_eot(ids).shape == (3, 7)
    assert torch.equal(trim_after_last_eot(ids), ids[:, :7])
    assert trim_after_last_eot(ids[:, :1]).shape == (3, 1)
    assert trim_after_last_eot(ids[:0]).shape == (0, 16)


def test_trimmed_text_equals_the_full_context_pass():
    model = randomize(CLIP(tiny_clip_config()))
    ids = token_ids(4, 16, [3, 6, 4, 5], seed=2)
    with torch.inference_mode():
        got = model.encode_text(ids)
        full = model.text.forward_features(ids)
        want = full[torch.arange(4), ids.argmax(-1)] @ model.text.text_projection
    assert got.shape == (4, 16)
    assert rel_err(got, want) <= 1e-6


# --- bf16 ------------------------------------------------------------------------------------------------


def test_bf16_load_and_agreement_with_float32(tmp_path):
    cfg = released_config("PE-Core-B16-224", depth=2, text_depth=2)
    model = randomize(create_model(cfg))
    save(model, tmp_path / "b16.safetensors")
    bf = load(tmp_path / "b16.safetensors", dtype="bf16")
    assert all(p.dtype == torch.bfloat16 for p in bf.parameters())
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    ids = token_ids(2, 32, [6, 11])
    with torch.inference_mode():
        img32, img16 = model.encode_image(x), bf.encode_image(x)
        txt32, txt16 = model.encode_text(ids), bf.encode_text(ids)
    assert img16.dtype == torch.bfloat16
    assert F.cosine_similarity(img16.float(), img32).min() >= 0.999
    assert F.cosine_similarity(txt16.float(), txt32).min() >= 0.999


# --- torch.compile ---------------------------------------------------------------------------------------


def test_towers_trace_without_graph_breaks():
    model = randomize(CLIP(tiny_clip_config()))
    x = torch.randn(2, 3, 32, 32)
    ids = token_ids(2, 16, [5, 16])
    with torch.no_grad():
        for tower, arg in ((model.visual, x), (model.text, ids)):
            torch._dynamo.reset()
            explained = torch._dynamo.explain(tower)(arg)
            assert explained.graph_break_count == 0, explained.break_reasons
            assert explained.graph_count == 1


def test_compiled_towers_match_eager():
    """fullgraph=True fails on any graph break; the aot_eager backend traces like inductor without
    compiling C++ (fast enough for every CI run)."""
    torch._dynamo.reset()
    model = randomize(CLIP(tiny_clip_config()))
    x = torch.randn(2, 3, 32, 32)
    ids = token_ids(3, 16, [4, 9, 6])
    with torch.no_grad():
        want_img, want_txt = model.encode_image(x), model.encode_text(ids)
        visual = torch.compile(model.visual, backend="aot_eager", fullgraph=True)
        assert rel_err(visual(x), want_img) <= 1e-5
        model.text = torch.compile(model.text, backend="aot_eager", fullgraph=True)
        # encode_text trims before the compiled tower: two lengths, both right
        assert rel_err(model.encode_text(ids), want_txt) <= 1e-5
        assert rel_err(model.encode_text(ids[:1]), want_txt[:1]) <= 1e-5


@pytest.mark.slow
def test_inductor_compiles_the_vision_tower():
    pytest.importorskip("torch._inductor")
    torch._dynamo.reset()
    model = randomize(VisionTransformer(tiny_vision_config(depth=1)))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = model(x)
        try:
            got = torch.compile(model, fullgraph=True)(x)
        except Exception as exc:  # no C++ compiler on this machine: nothing of ours to test
            if "compiler" in str(exc).lower() or "cpp" in str(exc).lower():
                pytest.skip(f"inductor cannot compile here: {exc}")
            raise
    assert rel_err(got, want) <= 1e-5


# --- threads ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "dtype, packed",
    [
        (torch.float32, False),
        (torch.bfloat16, False),
        pytest.param(torch.bfloat16, True, marks=needs_onednn(packing=True, dtype=torch.bfloat16)),
    ],
)
def test_threads_sharing_one_model_agree_with_one_thread(dtype, packed):
    """Packed: the threads race to make the packed copies (made once, under a lock)."""
    model = randomize(CLIP(tiny_clip_config())).to(dtype)
    g = torch.Generator().manual_seed(7)
    jobs = []
    for i in range(12):
        if i % 2:
            jobs.append(("image", torch.randn(1 + i % 3, 3, 32 + 8 * (i % 3), 32, generator=g).to(dtype)))
        else:
            jobs.append(("text", token_ids(2, 16, [3 + i % 5, 4 + i % 7], seed=i)))

    def run(kind, arg):
        with torch.inference_mode():
            return model.encode_image(arg) if kind == "image" else model.encode_text(arg)

    expected = [run(*job) for job in jobs]
    linear_mod.clear_packed_weights()
    before = linear_mod.weight_packing_mode()
    linear_mod.set_weight_packing(packed)
    results: list = [None] * len(jobs)
    errors: list = []

    def work(i):
        try:
            for _ in range(3):
                results[i] = run(*jobs[i])
        except Exception as exc:  # surfaced below with the thread's index
            errors.append((i, exc))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(jobs))]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        linear_mod.set_weight_packing(before)
        linear_mod.clear_packed_weights()
    assert not errors, errors
    for got, want in zip(results, expected, strict=True):
        if packed:  # packed and plain products may round differently
            assert rel_err(got.float(), want.float()) <= 1e-2
        else:
            assert torch.equal(got, want)
