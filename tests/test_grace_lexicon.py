"""The GRACE lexicon (configs/grace/lexicon.yaml) covers facial-action language in general, not only the synthetic
clips' paraphrases: every FACS action unit by its code and its FACS name, and common words for them, map to one
canonical phrase each."""

from __future__ import annotations

import pytest

from vlm_salience.grace.text import load_lexicon, refine_rules

# FACS's main action units: (code, the FACS name)
FACS = [(1, "inner brow raiser"), (2, "outer brow raiser"), (4, "brow lowerer"), (5, "upper lid raiser"),
        (6, "cheek raiser"), (7, "lid tightener"), (9, "nose wrinkler"), (10, "upper lip raiser"),
        (11, "nasolabial deepener"), (12, "lip corner puller"), (13, "sharp lip puller"), (14, "dimpler"),
        (15, "lip corner depressor"), (16, "lower lip depressor"), (17, "chin raiser"), (18, "lip pucker"),
        (20, "lip stretcher"), (22, "lip funneler"), (23, "lip tightener"), (24, "lip pressor"), (25, "lips part"),
        (26, "jaw drop"), (27, "mouth stretch"), (28, "lip suck"), (41, "lid droop"), (43, "eyes closed"),
        (45, "blink"), (46, "wink")]


@pytest.fixture(scope="module")
def lexicon():
    return load_lexicon()  # the packaged configs/grace/lexicon.yaml


@pytest.mark.parametrize("code,name", FACS, ids=[f"AU{c}" for c, _ in FACS])
def test_every_action_unit_by_code_and_name(lexicon, code, name):
    canonical = refine_rules(f"AU{code}", lexicon)
    assert canonical is not None and f"AU{code} " in canonical + " ", f"AU{code}: {canonical}"
    for said in (f"AU {code}", f"action unit {code}", name, f"the face shows {name.upper()} briefly"):
        assert refine_rules(said, lexicon) == canonical, said


@pytest.mark.parametrize("said,canonical", [
    ("raised eyebrows", "AU1 AU2 inner and outer brow raiser"),
    ("she raises her eyebrows", "AU1 AU2 inner and outer brow raiser"),
    ("lip corner puller", "AU12 lip corner puller"),
    ("AU12", "AU12 lip corner puller"),
    ("furrowed eyebrows", "AU4 brow lowerer"),
    ("eyes narrowed", "AU7 lid tightener"),
    ("the mouth stretched open", "AU27 mouth stretch"),
    ("pursed lips", "AU18 lip pucker"),
    ("laughing", "AU12 lip corner puller, AU6 cheek raiser"),
])
def test_common_words_map_to_canonical_phrases(lexicon, said, canonical):
    assert refine_rules(said, lexicon) == canonical


def test_several_actions_in_order_of_mention_each_once(lexicon):
    text = "Frowning, lips pressed together; AU4 again, then eyes narrowed."
    assert refine_rules(text, lexicon) == "AU4 brow lowerer; AU24 lip pressor; AU7 lid tightener"
    assert refine_rules("AU12 is not AU1, nor AU2", lexicon) == \
        "AU12 lip corner puller; AU1 inner brow raiser; AU2 outer brow raiser"
    assert refine_rules("a person in a kitchen", lexicon) is None  # no facial action: unparseable
