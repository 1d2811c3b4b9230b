"""A small byte-level BPE tokenizer trained locally, for tiny offline models (no hub download)."""

from __future__ import annotations

from collections.abc import Iterable

from vlm_salience.resources import home

DIGITS = [str(i) for i in range(10)] + [str(i) for i in range(10, 49)]


def tokenizer_corpus(extra: Iterable[str] = ()) -> list[str]:
    """Text the tiny tokenizer learns from: the shipped prompt templates, emotion labels of the shipped configs,
    JSON answer fragments and numbers. Any other text still tokenizes (byte-level), just into more pieces."""
    import yaml

    root = home()
    texts = [p.read_text(encoding="utf-8") for p in sorted((root / "prompts").glob("*.j2"))]
    labels: list[str] = []
    for p in sorted((root / "configs").rglob("*.yaml")):
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        if isinstance(data, dict):
            for key in ("emotions", "labels"):
                if isinstance(data.get(key), list):
                    labels += [str(x) for x in data[key]]
    labels = list(dict.fromkeys(labels))
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
