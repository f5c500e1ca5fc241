"""Tokenizers built in code, so no tokenizer file is ever downloaded.

A character-level WordPiece vocabulary: every printable ASCII character as a word start and as a
``##`` continuation. Any ASCII prompt tokenizes without unknown tokens, different prompts give
different ids, and the vocabulary (~200 entries) fits every text encoder's embedding table. They
are real ``transformers`` fast tokenizers: they pad, truncate, save and load like any other.
"""

from __future__ import annotations

import string

_CHARS = [c for c in string.printable if not c.isspace()]


def _vocab(specials: list[str]) -> dict[str, int]:
    vocab: dict[str, int] = {}
    for token in specials + _CHARS + ["##" + c for c in _CHARS]:
        vocab.setdefault(token, len(vocab))
    return vocab


def build_clip_tokenizer(max_length: int = 77):
    """CLIP-style: ``<|startoftext|> … <|endoftext|>``, padded with the end token, 77 tokens."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    bos, eos, unk = "<|startoftext|>", "<|endoftext|>", "<|unk|>"
    # bos 0, eos 1: the text encoders' configs use these ids, and an eos id other than 2 makes
    # CLIP pool at the first end token (transformers treats eos_token_id == 2 as a legacy case).
    vocab = _vocab([bos, eos, unk])
    tok = Tokenizer(models.WordPiece(vocab, unk_token=unk, max_input_chars_per_word=100))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece()
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", special_tokens=[(bos, vocab[bos]), (eos, vocab[eos])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=bos,
        eos_token=eos,
        unk_token=unk,
        pad_token=eos,
        model_max_length=max_length,
    )


def build_t5_tokenizer(max_length: int = 512):
    """T5/UMT5-style: ``… </s>``, padded with ``<pad>`` (id 0), end token id 1."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    pad, eos, unk = "<pad>", "</s>", "<unk>"
    vocab = _vocab([pad, eos, unk])
    tok = Tokenizer(models.WordPiece(vocab, unk_token=unk, max_input_chars_per_word=100))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece()
    tok.post_processor = processors.TemplateProcessing(single=f"$A {eos}", special_tokens=[(eos, vocab[eos])])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=eos,
        unk_token=unk,
        pad_token=pad,
        model_max_length=max_length,
    )
