"""The vague-coarse-text condition of GRACE's CATE (configs/grace/clips_vague.yaml): varied wording per clip that
the rule refiner maps back to each expression's canonical action-unit phrases."""

from __future__ import annotations

import re
from collections import defaultdict

import pytest

from vlm_salience.config import load_config
from vlm_salience.errors import ConfigError
from vlm_salience.data.video.synth import ClipSynthConfig, TextConfig, describe, plan_clips
from vlm_salience.grace.text import load_lexicon, refine_rules
from vlm_salience.resources import home

VAGUE = home() / "configs" / "grace" / "clips_vague.yaml"
CANONICAL = home() / "configs" / "grace" / "clips_no_distractors.yaml"


def _cues(text: str, lexicon) -> set[str]:
    refined = refine_rules(text, lexicon)
    return set(refined.split(lexicon.separator)) if refined else set()


def test_every_paraphrase_refines_to_its_expressions_canonical_phrases():
    lex = load_lexicon()
    vague = load_config(VAGUE, ClipSynthConfig)
    canonical = TextConfig().faces
    for cls, pool in vague.text.faces.items():
        want = _cues(canonical[cls], lex)
        assert want, cls
        assert isinstance(pool, list) and len(pool) >= 3, cls
        for phrase in pool:
            assert _cues(phrase, lex) == want, (cls, phrase)
            # vague: none of the canonical wording, which is what the refiner writes
            assert not any(a.lower() in phrase.lower() for a in want), phrase


def test_wording_varies_within_a_class_and_leaves_the_clips_as_they_were():
    vague = load_config(VAGUE, ClipSynthConfig)
    canonical = load_config(CANONICAL, ClipSynthConfig)
    specs = plan_clips(vague)
    assert specs == plan_clips(canonical)  # the wording stream moves no other draw: same faces, scenes, folds
    faces_of = defaultdict(set)
    for s in specs:
        text = describe(s, vague, ["a lamp"])
        assert text == describe(s, vague, ["a lamp"])  # seeded per clip
        faces_of[vague.classes[s.label]].add(text.split("Over the clip, ")[1])
        assert not re.search(r"\b(" + "|".join(vague.classes) + r")\b", text.lower()), text  # label-free
    for cls, pool in vague.text.faces.items():
        assert faces_of[cls] == {p + "." for p in pool}, cls  # every paraphrase drawn, nothing else


def test_an_empty_paraphrase_list_is_refused():
    with pytest.raises(ConfigError, match=r"text.faces of \['happy'\] is an empty list"):
        load_config(VAGUE, ClipSynthConfig, ["text.faces.happy=[]"])
