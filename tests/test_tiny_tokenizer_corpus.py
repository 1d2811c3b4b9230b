"""The tiny stand-in models' tokenizer learns from a frozen corpus (configs/models/tiny_tokenizer_corpus.json), not
from the live prompts/ and configs/: a sentence added to one template once changed every tiny model's vocabulary and
flipped the demo's fine-tuned figures (its combined adapter's test valence r went from above 0.5 to -0.50)."""

from __future__ import annotations

import hashlib
import json
import shutil

from conftest import REPO


def test_editing_the_prompts_or_configs_leaves_the_tiny_tokenizer_corpus_unchanged(tmp_path, monkeypatch):
    from vlm_salience.models.tokenizer import tokenizer_corpus

    before = tokenizer_corpus()
    home = tmp_path / "home"
    shutil.copytree(REPO / "prompts", home / "prompts")
    (home / "configs" / "models").mkdir(parents=True)
    shutil.copy(REPO / "configs" / "models" / "tiny_tokenizer_corpus.json", home / "configs" / "models")
    (home / "prompts" / "new_wording.j2").write_text("A brand new sentence about masked scenes and faces.\n")
    (home / "configs" / "extra.yaml").write_text("labels: [awe, boredom]\n")
    monkeypatch.setenv("VLM_SALIENCE_HOME", str(home))
    assert tokenizer_corpus() == before


def test_the_frozen_corpus_is_the_one_the_documented_figures_were_measured_with():
    """The demo's and the docs' tiny-model figures were measured with this corpus (the templates and labels as of
    703b8f7); changing it changes them all, so it changes only on purpose, with the figures re-measured."""
    from vlm_salience.models.tokenizer import tokenizer_corpus

    assert hashlib.sha256(json.dumps(tokenizer_corpus()).encode()).hexdigest()[:16] == "44238400b01fbea0"
