"""CLIP byte-level BPE tokenizer used by the PE-Core text towers.

Gives exactly the ids of the reference (OpenAI CLIP / open_clip ``SimpleTokenizer`` with the ``"lower"``
clean function, the one the PE-Core configs use):

* cleaning: ftfy ``fix_text``, HTML unescape twice, collapse whitespace (and strip), lower-case;
* pre-tokenisation: the CLIP regex (contractions, letter runs, single digits, punctuation runs);
* each piece: UTF-8 bytes mapped to printable characters, then BPE with a ``</w>`` end-of-word marker
  using the 48,894 merges of ``assets/bpe_simple_vocab_16e6.txt.gz``;
* output rows ``[SOT] ids [EOT]`` zero-padded to the context length; an over-long row is cut to the
  context length and its last token replaced by EOT.

The merge tables are loaded once per process on first use and shared by every ``Tokenizer``; a
``Tokenizer`` itself only holds its context length, so it pickles in a few bytes (data-loader workers).
"""

from __future__ import annotations

import functools
import gzip
import html
import operator
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import ftfy
import numpy as np
import regex
import torch

__all__ = ["Tokenizer", "tokenizer"]

VOCAB_PATH = Path(__file__).resolve().parent / "assets" / "bpe_simple_vocab_16e6.txt.gz"
NUM_MERGES = 49152 - 256 - 2  # the reference keeps the first 48,894 merges of the file
VOCAB_SIZE = 49408  # 256 bytes + 256 bytes with </w> + merges + SOT + EOT
SOT_TOKEN = "<start_of_text>"
EOT_TOKEN = "<end_of_text>"
SOT_ID = VOCAB_SIZE - 2
EOT_ID = VOCAB_SIZE - 1
DEFAULT_CONTEXT_LENGTH = 32  # PE-Core B/L/S/T; bigG uses 72

# Per-word BPE results are memoised; a bounded LRU keeps memory flat on open-ended caption streams.
_WORD_CACHE_SIZE = 1 << 16

# The reference split pattern, flags included: IGNORECASE matters for a few non-ASCII case folds
# (e.g. "'ſ" matches "'s") that lower-casing alone leaves untouched.
_SPLIT = regex.compile(
    r"<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+",
    regex.IGNORECASE,
)

# Text made only of these characters is left unchanged by ftfy (ASCII, no '&' entity, no control or
# carriage-return character) and by html.unescape, so cleaning can skip both: the common case is fast.
_NEEDS_FIXING = regex.compile(r"[^\t\n\x20-\x25\x27-\x7e]")


@dataclass(frozen=True)
class _Tables:
    byte_to_char: tuple[str, ...]  # byte value -> printable stand-in character
    char_to_byte: dict[str, int]
    encoder: dict[str, int]  # BPE symbol -> id
    decoder: tuple[str, ...]  # id -> BPE symbol
    ranks: dict[tuple[str, str], int]  # merge pair -> priority (lower merges first)


def _byte_alphabet() -> tuple[str, ...]:
    """Map every byte to a printable character: printable Latin-1 bytes keep their own character, the
    rest (controls, space, soft hyphen...) take code points 256, 257, ... in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), 256)]
    keep = set(printable)
    table: list[str] = []
    extra = 256
    for b in range(256):
        if b in keep:
            table.append(chr(b))
        else:
            table.append(chr(extra))
            extra += 1
    return tuple(table)


@functools.lru_cache(maxsize=1)
def _tables() -> _Tables:
    """Load the merges once per process (about 0.1 s)."""
    if not VOCAB_PATH.is_file():
        raise FileNotFoundError(
            f"BPE vocabulary not found at {VOCAB_PATH}; the package install is incomplete"
        )
    merges: list[tuple[str, str]] = []
    with gzip.open(VOCAB_PATH, "rt", encoding="utf-8") as f:
        next(f)  # version header
        for line in f:
            if len(merges) == NUM_MERGES:
                break
            first, second = line.split()
            merges.append((first, second))
    if len(merges) != NUM_MERGES:
        raise ValueError(f"{VOCAB_PATH} holds {len(merges)} merges, expected {NUM_MERGES}")

    byte_to_char = _byte_alphabet()
    # Id order: bytes (in stand-in order), the same with </w>, one symbol per merge, then SOT and EOT.
    order = sorted(range(256), key=lambda b: ord(byte_to_char[b]))
    symbols = [byte_to_char[b] for b in order]
    symbols += [s + "</w>" for s in symbols]
    symbols += [a + b for a, b in merges]
    symbols += [SOT_TOKEN, EOT_TOKEN]
    assert len(symbols) == VOCAB_SIZE
    return _Tables(
        byte_to_char=byte_to_char,
        char_to_byte={c: b for b, c in enumerate(byte_to_char)},
        encoder={s: i for i, s in enumerate(symbols)},
        decoder=tuple(symbols),
        ranks={pair: i for i, pair in enumerate(merges)},
    )


def _merge(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Byte-pair merging: repeatedly join every occurrence (left to right, non-overlapping) of the
    adjacent pair with the lowest merge rank, until no adjacent pair is a known merge."""
    while len(symbols) > 1:
        best_rank = NUM_MERGES
        best: tuple[str, str] | None = None
        for pair in zip(symbols, symbols[1:], strict=False):  # adjacent pairs
            rank = ranks.get(pair, NUM_MERGES)
            if rank < best_rank:
                best_rank, best = rank, pair
        if best is None:
            break
        first, second = best
        merged: list[str] = []
        i, n = 0, len(symbols)
        while i < n:
            if i + 1 < n and symbols[i] == first and symbols[i + 1] == second:
                merged.append(first + second)
                i += 2
            else:
                merged.append(symbols[i])
                i += 1
        symbols = merged
    return symbols


@functools.lru_cache(maxsize=_WORD_CACHE_SIZE)
def _word_ids(piece: str) -> tuple[int, ...]:
    """Ids of one pre-tokenised piece (a word, a digit, a punctuation run or a special token)."""
    if piece == SOT_TOKEN:  # the reference maps literal special tokens in the text to their ids
        return (SOT_ID,)
    if piece == EOT_TOKEN:
        return (EOT_ID,)
    t = _tables()
    chars = [t.byte_to_char[b] for b in piece.encode("utf-8")]
    chars[-1] += "</w>"
    encoder = t.encoder
    return tuple(encoder[s] for s in _merge(chars, t.ranks))


def clean_text(text: str) -> str:
    """The reference cleaning: ftfy fix, HTML unescape twice, whitespace collapsed and stripped, lower case."""
    if not text.isascii() or _NEEDS_FIXING.search(text) is not None:
        text = html.unescape(html.unescape(ftfy.fix_text(text)))
    return " ".join(text.split()).lower()


def _encode_clean(text: str) -> list[int]:
    ids: list[int] = []
    for piece in _SPLIT.findall(text):
        ids.extend(_word_ids(piece))
    return ids


def _check_context_length(context_length: object) -> int:
    if isinstance(context_length, bool):
        raise TypeError(f"context_length must be an int, got {type(context_length).__name__}")
    try:
        value = operator.index(context_length)
    except TypeError:
        raise TypeError(f"context_length must be an int, got {type(context_length).__name__}") from None
    if value < 2:
        raise ValueError(f"context_length must be >= 2 (room for SOT and EOT), got {value}")
    return value


def _as_text_list(texts: str | Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        return [texts]
    if isinstance(texts, (bytes, bytearray)) or not isinstance(texts, Iterable):
        raise TypeError(f"texts must be a str or a sequence of str, got {type(texts).__name__}")
    items = list(texts)
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise TypeError(f"texts[{i}] must be a str, got {type(item).__name__}")
    return items


class Tokenizer:
    """CLIP BPE tokenizer: strings -> ``LongTensor (B, context_length)`` of ``[SOT] ids [EOT] 0...``.

    Cheap to create and to pickle (only the context length is stored; the shared merge tables load on
    first use). Thread-safe.
    """

    __slots__ = ("_context_length",)

    def __init__(self, context_length: int = DEFAULT_CONTEXT_LENGTH) -> None:
        self._context_length = _check_context_length(context_length)

    def __reduce__(self):
        return (type(self), (self._context_length,))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(context_length={self._context_length})"

    @property
    def context_length(self) -> int:
        """Row length of ``__call__``'s output when no other length is given."""
        return self._context_length

    @property
    def vocab_size(self) -> int:
        return VOCAB_SIZE

    @property
    def sot_token_id(self) -> int:
        return SOT_ID

    @property
    def eot_token_id(self) -> int:
        return EOT_ID

    @property
    def pad_token_id(self) -> int:
        return 0

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> torch.Tensor:
        """One string or a sequence of ``B`` strings -> ``LongTensor (B, context_length)``.

        Each row is ``[SOT] ids [EOT]`` followed by zeros; text longer than the row is cut, and the last
        kept token is replaced by EOT (so the EOT position, the text tower's pooling point, is always
        the row's argmax). A single string gives ``B = 1``.
        """
        length = self._context_length if context_length is None else _check_context_length(context_length)
        items = _as_text_list(texts)
        out = torch.zeros((len(items), length), dtype=torch.long)
        rows = out.numpy()  # shares memory: fill the tensor in place without per-row tensor creation
        for i, text in enumerate(items):
            ids = _encode_clean(clean_text(text))
            n = len(ids) + 2
            if n > length:
                rows[i, 0] = SOT_ID
                rows[i, 1 : length - 1] = ids[: length - 2]
                rows[i, length - 1] = EOT_ID
            else:
                rows[i, 0] = SOT_ID
                rows[i, 1 : n - 1] = ids
                rows[i, n - 1] = EOT_ID
        return out

    def encode(self, text: str) -> list[int]:
        """Token ids of one string, without SOT/EOT and without truncation."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        return _encode_clean(clean_text(text))

    def decode(
        self, ids: Sequence[int] | torch.Tensor | np.ndarray, skip_special_tokens: bool = False
    ) -> str:
        """Token ids (list, or 1-D tensor/array) -> text, as the reference decodes: each end-of-word
        marker becomes a space (so the text ends with one), invalid UTF-8 becomes U+FFFD.

        With ``skip_special_tokens`` a SOT is dropped and decoding stops at the first EOT, which turns
        a padded row of ``__call__``'s output back into its text.
        """
        if isinstance(ids, (torch.Tensor, np.ndarray)):
            if ids.ndim != 1:
                raise ValueError(f"ids must be 1-D, got shape {tuple(ids.shape)}")
            ids = ids.tolist()
        t = _tables()
        symbols: list[str] = []
        for i, value in enumerate(ids):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise TypeError(f"ids[{i}] must be an int, got {type(value).__name__}")
            if not 0 <= value < VOCAB_SIZE:
                raise ValueError(f"ids[{i}] = {value} is outside the vocabulary [0, {VOCAB_SIZE})")
            if skip_special_tokens:
                if value == EOT_ID:
                    break
                if value == SOT_ID:
                    continue
            symbols.append(t.decoder[value])
        data = bytes(t.char_to_byte[c] for c in "".join(symbols))
        return data.decode("utf-8", errors="replace").replace("</w>", " ")


def tokenizer(context_length: int = DEFAULT_CONTEXT_LENGTH) -> Tokenizer:
    """The CLIP tokenizer for PE-Core text towers (context 32 for B/L/S/T, 72 for bigG)."""
    return Tokenizer(context_length)
