"""A small byte-level BPE tokenizer trained locally, for tiny offline models (no hub download)."""

from __future__ import annotations

from collections.abc import Iterable

from vlm_salience.resources import home

DIGITS = [str(i) for i in range(10)] + [str(i) for i in range(10, 49)]


def tokenizer_corpus(extra: Iterable[str] = ()) -> list[str]:
    """Text the tiny tokenizer learns from: the prompt templates and the configs' emotion labels frozen in
    configs/models/tiny_tokenizer_corpus.json, JSON answer fragments and numbers. Frozen, because a tiny model's
    vocabulary is learned from this text: when it was read from the live prompts/ and configs/, a new sentence in one
    template changed every tiny model, and the demo's fine-tuned figures with it (its combined adapter's test
    valence r fell from above 0.5 to -0.50). Any other text still tokenizes (byte-level), just into more pieces."""
    import json

    frozen = json.loads((home() / "configs" / "models" / "tiny_tokenizer_corpus.json").read_text(encoding="utf-8"))
    texts = list(frozen["templates"])
    labels = list(frozen["labels"])
    fragments = [f'{{"emotion": "{lab}", "valence": {d}}}' for lab in labels for d in range(1, 10)]
    fragments += [f' "{lab}": 0.{d}' for lab in labels for d in range(10)]
    texts += fragments * 3 + [" ".join(DIGITS)] * 20 + [" ".join(labels)] * 50 + list(extra)
    return texts


def train_tokenizer(special_tokens: list[str], *, vocab_size: int, eos: str, pad: str,
                    extra_text: Iterable[str] = ()):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special_tokens, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(tokenizer_corpus(extra_text), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos, pad_token=pad)
