"""A word-level tokenizer for small closed vocabularies (the shapes world), built with `tokenizers`.

It is saved as a standard `tokenizer.json`, so `transformers.PreTrainedTokenizerFast`
loads it offline like any other fast tokenizer.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

SPECIALS = ("[PAD]", "[BOS]", "[UNK]", "[EOS]")  # ids 0..3; EOS is not 2, see CLIP's pooling rule


def build_word_tokenizer(words: Iterable[str], max_length: int) -> PreTrainedTokenizerFast:
    """Tokenizer over `words` (lower-cased whitespace tokens), padded/truncated to `max_length`."""
    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    for w in sorted(set(words)):
        vocab.setdefault(w, len(vocab))
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.post_processor = processors.TemplateProcessing(
        single="[BOS] $A [EOS]", special_tokens=[("[BOS]", 1), ("[EOS]", 3)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="[PAD]",
        bos_token="[BOS]",
        unk_token="[UNK]",
        eos_token="[EOS]",
        model_max_length=max_length,
        do_lower_case=True,
    )
