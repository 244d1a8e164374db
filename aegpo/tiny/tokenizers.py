"""Tiny, offline tokenizers of the real classes (CLIP BPE, T5 unigram, BERT WordPiece).

They are built from `words.txt` (shipped in this package) with transformers' v5 constructors
(`CLIPTokenizer(vocab=..., merges=...)`, `T5Tokenizer(vocab=[(piece, score), ...])`,
`BertTokenizer(vocab=...)`), so a tiny pipeline or reward model saved with them reloads
with `from_pretrained` exactly like a published one, without any download.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from transformers import BertTokenizer, CLIPTokenizer, T5Tokenizer

WORDS_FILE = Path(__file__).with_name("words.txt")


@lru_cache(maxsize=1)
def words() -> tuple[str, ...]:
    """The vocabulary words of words.txt (blank lines and '#' comments skipped)."""
    lines = WORDS_FILE.read_text(encoding="utf-8").splitlines()
    return tuple(w.strip() for w in lines if w.strip() and not w.startswith("#"))


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte → printable unicode character table."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def clip_tokenizer(max_length: int = 77) -> CLIPTokenizer:
    """CLIP byte-level BPE over every byte plus one merged token per word of words.txt."""
    alphabet = list(_bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for tok in alphabet + [c + "</w>" for c in alphabet]:
        vocab.setdefault(tok, len(vocab))
    merges: list[tuple[str, str]] = []
    for word in words():
        symbols = list(word[:-1]) + [word[-1] + "</w>"]
        while len(symbols) > 1:
            merged = symbols[0] + symbols[1]
            if (symbols[0], symbols[1]) not in merges:
                merges.append((symbols[0], symbols[1]))
            vocab.setdefault(merged, len(vocab))
            symbols = [merged] + symbols[2:]
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab.setdefault(special, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length)


def t5_tokenizer(max_length: int = 512) -> T5Tokenizer:
    """T5 unigram tokenizer: specials, one piece per word, and single letters as fallback."""
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [("▁" + w, -1.0) for w in words()]
    pieces += [(c, -5.0) for c in "abcdefghijklmnopqrstuvwxyz0123456789"]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=max_length)


def bert_tokenizer(max_length: int = 512) -> BertTokenizer:
    """BERT WordPiece (uncased): specials, words, letters and '##' continuations."""
    vocab: dict[str, int] = {}
    for tok in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words(), *"abcdefghijklmnopqrstuvwxyz0123456789.,!?'"):
        vocab.setdefault(tok, len(vocab))
    for c in "abcdefghijklmnopqrstuvwxyz":
        vocab.setdefault("##" + c, len(vocab))
    return BertTokenizer(vocab=vocab, model_max_length=max_length)
