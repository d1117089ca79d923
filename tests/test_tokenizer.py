"""CLIP BPE tokenizer: id parity with open_clip's PE-Core tokenizers, batching, pickling, decoding, errors."""

from __future__ import annotations

import importlib
import pickle
import random
import subprocess
import sys

import numpy as np
import pytest
import torch

from perception_encoder.tokenization import EOT_ID, SOT_ID, VOCAB_SIZE, Tokenizer, tokenizer

# The module itself (``from perception_encoder import tokenizer`` may give the factory function).
tokenizer_module = importlib.import_module("perception_encoder.tokenization")

open_clip = pytest.importorskip("open_clip")

# Hand-picked cases for every cleaning and splitting rule.
CURATED = [
    "",
    " ",
    "\t\n \r\n",
    "a photo of a cat",
    "A Photo Of A CAT.",
    "it's",
    "IT'S",
    "we're",
    "they'll",
    "I'd",
    "you've",
    "I'm",
    "don't",
    "rock'n'roll",
    "'s'",
    "'ſ",
    "''''",
    "&amp;amp;",
    "&amp;amp;amp;",
    "&lt;b&gt;bold&lt;/b&gt;",
    "<b>&amp;amp;</b>",
    "&#39;quoted&#39;",
    "&#x2019;",
    "caf&eacute;",
    "&nbsp;x&nbsp;",
    "&amp",
    "this&not that",
    "&notit;",
    "P&EACUTE;REZ",
    "&;",
    "& &&",
    "sÃ³",
    "âœ” No problems",
    "Ã©tÃ©",
    "voilÃ le travail",
    "&macr;\\_(ã\x83\x84)_/&macr;",
    "ï»¿bom",
    "Broken text&hellip; it&#x2019;s ﬂubberiﬁc!",
    "ＬＯＵＤ　ＮＯＩＳＥＳ",
    "“curly” ‘quotes’",
    "12345",
    "3.14159",
    "1,000,000",
    "٣٤٥",
    "²³ ½ Ⅻ",
    "0x1F600",
    "v2.0-beta+build.7",
    "!!!???...",
    "---",
    "()[]{}<>",
    "@#$%^*",
    "...!?!?",
    "__init__",
    "a_b-c.d/e\\f",
    "<start_of_text>",
    "<END_OF_TEXT>",
    "hi <start_of_text> there",
    "<start_of_text",
    "<ſtart_of_text>",
    "x<end_of_text>y",
    "naïve café résumé",
    "e\u0301e\u0301",
    "Ångström",
    "İstanbul",
    "ǅemal",
    "STRASSE straße",
    "ΣΑΣ σας",
    "Kelvin \u212a",
    "ﬃ ligature",
    "日本語のテキスト",
    "中文字符测试",
    "한국어 텍스트",
    "ไทย",
    "हिन्दी",
    "العربية",
    "עברית",
    "Ελληνικά",
    "Русский текст",
    "ქართული",
    "Հայերեն",
    "አማርኛ",
    "ᚠᚢᚦ",
    "𝒥ohn ℋancock",
    "𠀀𠀁",
    "🙂",
    "👩‍👩‍👧‍👦 family",
    "👍🏽",
    "🇫🇷🇯🇵",
    "❤️",
    "🏳️‍🌈",
    "a🙂b🙂c",
    "\x1b[31mred\x1b[0m",
    "nul\x00char",
    "del\x7f",
    "bell\x07",
    "\x0b\x0c\x1c\x1d\x1e\x1f",
    "\u00a0nbsp\u3000ideographic\u2028line\u2029para\x85nel",
    "zero\u200bwidth",
    "\ufeffbom",
    "rtl\u202eltr",
    "\ud800 lone surrogate",
    "a\ud83d\ude00b",
    "tab\tseparated\tvalues",
    "multi\n\nline\n\ntext",
    "  leading and trailing  ",
    "word " * 100,
    "supercalifragilisticexpialidocious" * 8,
    "日本" * 60,
    "🙂" * 50,
    "a" * 500,
    "1" * 200,
]

# Every ASCII character in context (the ASCII fast path of cleaning must agree with ftfy).
CURATED += [f"a{chr(c)}b &amp;{chr(c)}lt; {chr(c)}{chr(c)}" for c in range(128)]

# Fragments mixed at random into several hundred more strings.
FRAGMENTS = [
    "photo",
    "of",
    "a",
    "the",
    "dog",
    "Cat",
    "BIRD",
    "it's",
    "they're",
    "we'll",
    "I'd",
    "x-ray",
    "e-mail",
    "naïve",
    "Zürich",
    "São Paulo",
    "Kraków",
    "Ελλάδα",
    "Москва",
    "東京",
    "北京",
    "서울",
    "मुंबई",
    "القاهرة",
    "ירושלים",
    "กรุงเทพ",
    "🙂",
    "👩‍💻",
    "🏳️‍🌈",
    "🇯🇵",
    "✔",
    "★",
    "©",
    "™",
    "°C",
    "€100",
    "$5",
    "50%",
    "&amp;",
    "&amp;amp;",
    "&lt;",
    "&gt;",
    "&quot;",
    "&#233;",
    "&eacute;",
    "<i>",
    "</i>",
    "Ã©",
    "â€™",
    "Ã¼",
    "2024",
    "3.5",
    "1/2",
    "½",
    "٣",
    "...",
    "!!",
    "?!",
    "--",
    "—",
    "–",
    "•",
    "(",
    ")",
    "#tag",
    "@user",
    "http://example.com/a?b=c&d=e",
    "user@mail.org",
    "C++",
    "F#",
    "don't",
    "can't",
    "O'Neil",
    "\u0301",
    "\u200d",
    "\ufe0f",
    "\t",
    "\n",
    "\r\n",
    "\u00a0",
]
SEPARATORS = [" ", " ", " ", "", "  ", "\n", "\t", ", ", ". "]


def _random_codepoint(rng: random.Random) -> str:
    lo, hi = rng.choice(
        [(0x20, 0x7F), (0xA0, 0x250), (0x370, 0x530), (0x590, 0x700), (0x900, 0xE80), (0x1100, 0x1200),
         (0x2000, 0x2BFF), (0x3000, 0x30FF), (0x4E00, 0x9FFF), (0xAC00, 0xD7A3), (0xFB00, 0xFFFD),
         (0x1F300, 0x1FAFF), (0x20000, 0x2A6DF)]
    )  # fmt: skip
    return chr(rng.randrange(lo, hi))


def _generated(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    out = []
    for k in range(n):
        if k % 4 == 3:  # raw random code points from many blocks
            text = "".join(_random_codepoint(rng) for _ in range(rng.randint(1, 40)))
        else:
            parts = [rng.choice(FRAGMENTS) for _ in range(rng.randint(1, 12))]
            text = "".join(p + rng.choice(SEPARATORS) for p in parts)
        case = rng.random()
        if case < 0.15:
            text = text.upper()
        elif case < 0.3:
            text = text.title()
        elif case < 0.4:
            text = text.swapcase()
        if rng.random() < 0.05:  # far over the context length
            text = text * rng.randint(10, 30)
        out.append(text)
    return out


TEXTS = CURATED + _generated(400, seed=0)


@pytest.fixture(scope="module")
def ref_b16():
    return open_clip.get_tokenizer("PE-Core-B-16")


@pytest.fixture(scope="module")
def ref_bigg():
    return open_clip.get_tokenizer("PE-Core-bigG-14-448")


def test_reference_tokenizers_are_the_plain_clip_ones(ref_b16, ref_bigg):
    # Guards the assumption that PE-Core uses the default lower-case cleaning with plain truncation.
    for ref, length in [(ref_b16, 32), (ref_bigg, 72)]:
        assert type(ref).__name__ == "SimpleTokenizer"
        assert ref.context_length == length
        assert ref.clean_fn.__name__ == "_clean_lower"
        assert ref.reduction_fn is None
        assert ref.vocab_size == VOCAB_SIZE
        assert (ref.sot_token_id, ref.eot_token_id) == (SOT_ID, EOT_ID)


def test_encode_matches_reference_without_truncation(ref_b16):
    tok = Tokenizer()
    mismatches = [t for t in TEXTS if tok.encode(t) != ref_b16.encode(t)]
    assert not mismatches, f"{len(mismatches)} mismatches, first: {mismatches[:3]!r}"


@pytest.mark.parametrize("name, length", [("b16", 32), ("bigg", 72)])
def test_batch_ids_match_reference(name, length, ref_b16, ref_bigg):
    ref = ref_b16 if name == "b16" else ref_bigg
    tok = tokenizer(length)
    ours, theirs = tok(TEXTS), ref(TEXTS)
    assert ours.dtype == torch.long and ours.shape == (len(TEXTS), length)
    bad = (ours != theirs).any(dim=1).nonzero().flatten().tolist()
    assert not bad, f"rows differ for {[TEXTS[i] for i in bad[:3]]!r}"
    # Rows that overflowed were cut and end in EOT.
    overflow = [i for i, t in enumerate(TEXTS) if len(tok.encode(t)) + 2 > length]
    assert len(overflow) > 10
    assert (ours[overflow, -1] == EOT_ID).all()


@pytest.mark.parametrize("length", [2, 3, 5, 77])
def test_other_context_lengths_match_reference(length, ref_b16):
    texts = TEXTS[::7]
    assert torch.equal(Tokenizer(32)(texts, context_length=length), ref_b16(texts, context_length=length))


def test_row_layout():
    tok = Tokenizer(8)
    ids = tok.encode("a photo of a cat")
    row = tok("a photo of a cat")[0].tolist()
    assert row == [SOT_ID, *ids, EOT_ID] + [0] * (8 - len(ids) - 2)
    assert tok("")[0].tolist() == [SOT_ID, EOT_ID] + [0] * 6
    long = tok("word " * 50)[0].tolist()
    assert long == [SOT_ID] + tok.encode("word " * 50)[:6] + [EOT_ID]


def test_single_string_equals_list_and_batch_rows_are_independent():
    tok = Tokenizer(32)
    single = torch.cat([tok(t) for t in TEXTS[:50]])
    assert tok(TEXTS[0]).shape == (1, 32)
    assert torch.equal(single, tok(TEXTS[:50]))
    assert torch.equal(tok(tuple(TEXTS[:50])), single)
    assert tok([]).shape == (0, 32)


def test_result_does_not_depend_on_the_word_cache():
    tok = Tokenizer(72)
    warm = tok(TEXTS)
    tokenizer_module._word_ids.cache_clear()
    assert torch.equal(tok(TEXTS), warm)


def test_properties():
    tok = tokenizer(72)
    assert (tok.vocab_size, tok.sot_token_id, tok.eot_token_id, tok.context_length) == (
        49408,
        49406,
        49407,
        72,
    )
    assert tokenizer().context_length == 32
    assert repr(tok) == "Tokenizer(context_length=72)"


def test_pickle_round_trip_is_small_and_identical():
    tok = Tokenizer(72)
    blob = pickle.dumps(tok)
    assert len(blob) < 200  # no merge tables inside
    clone = pickle.loads(blob)
    assert isinstance(clone, Tokenizer) and clone.context_length == 72
    assert torch.equal(clone(TEXTS[:100]), tok(TEXTS[:100]))


@pytest.mark.parametrize(
    "text", ["a photo of a cat", "the quick brown fox jumps over the lazy dog", "x", "hello world"]
)
def test_decode_round_trip(text):
    tok = Tokenizer(32)
    assert tok.decode(tok.encode(text)) == text + " "
    row = tok(text)[0]
    assert tok.decode(row, skip_special_tokens=True) == text + " "
    assert tok.decode(row.numpy(), skip_special_tokens=True) == text + " "


def test_decode_matches_reference(ref_b16):
    tok = Tokenizer()
    for text in TEXTS[:80]:
        ids = tok.encode(text)
        assert tok.decode(ids) == ref_b16.decode(ids)
    # A cut inside a multi-byte character decodes to U+FFFD like the reference.
    ids = tok.encode("𠀀")[:2]  # a 4-byte character split over 4 byte tokens
    assert tok.decode(ids) == ref_b16.decode(ids)
    assert "\ufffd" in tok.decode(ids)


def test_bad_inputs():
    tok = Tokenizer()
    with pytest.raises(TypeError, match=r"texts\[1\].*int"):
        tok(["ok", 3, "fine"])
    with pytest.raises(TypeError, match=r"texts\[0\].*NoneType"):
        tok([None])
    with pytest.raises(TypeError, match="bytes"):
        tok(b"abc")
    with pytest.raises(TypeError, match="int"):
        tok(5)
    with pytest.raises(TypeError, match="float"):
        tok.encode(1.5)
    with pytest.raises(ValueError, match="context_length"):
        Tokenizer(1)
    with pytest.raises(ValueError, match="context_length"):
        tok("a", context_length=0)
    with pytest.raises(TypeError, match="context_length"):
        Tokenizer(2.5)
    with pytest.raises(ValueError, match=r"ids\[1\]"):
        tok.decode([320, VOCAB_SIZE])
    with pytest.raises(ValueError, match=r"ids\[0\]"):
        tok.decode([-1])
    with pytest.raises(TypeError, match=r"ids\[0\]"):
        tok.decode(["a"])
    with pytest.raises(ValueError, match="1-D"):
        tok.decode(tok(["a", "b"]))
    assert Tokenizer(np.int64(16)).context_length == 16


def test_public_name_works_whatever_the_import_order():
    # Importing the submodule first must not shadow the public factory pe.tokenizer.
    code = (
        "import perception_encoder.tokenization, perception_encoder as pe\n"
        "t = pe.tokenizer(72)\n"
        "assert isinstance(t, pe.Tokenizer) and t.context_length == 72, t\n"
        "print(t('a cat')[0, :4].tolist())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str([SOT_ID, 320, 2368, EOT_ID])
