"""The salience law table (vlm_salience/law_kinds.py) and every consumer agree: the law's weights, the fit, the
study's covariates and prior settings, the generator's plantable kinds, the configs and the docs. A kind added to
the table and not to a consumer (or the other way round) fails at import, naming it."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from dataclasses import replace
from typing import get_args

import numpy as np
import pytest
from pydantic import ValidationError

from tests.conftest import REPO
from vlm_salience import bci, law_kinds, reliability, salience, study
from vlm_salience.cue_models import Block, CueTable
from vlm_salience.data import synth
from vlm_salience.law_kinds import LAWS, LawKind, kinds, law_spec
from vlm_salience.salience import SalienceLaw

KNOWN = "plain, control, hard, logistic, reliability, per_emotion, learned"


def _cues(n=60, seed=0, valence=True):
    """Emotions as a choice over 4 labels (and a valence scale), targets drawn from plain BCI."""
    rng = np.random.default_rng(seed)

    def dists(shape):
        g = rng.gamma(1.0, size=shape) + 0.05
        return g / g.sum(axis=-1, keepdims=True)

    blocks = []
    for name, shape, cat in (("emotions", (n, 1, 4), True), ("valence", (n, 1, 7), False))[:2 if valence else 1]:
        f, c, p0 = dists(shape), dists(shape), dists(shape)
        truth = bci.tempered_product(f, c, p0, np.ones(n), np.ones(n))
        counts = np.stack([rng.multinomial(12, truth[i, 0]) for i in range(n)])[:, None, :].astype(float)
        blocks.append(Block(name, np.arange(float(shape[-1])), f, c, p0, counts, cat))
    return CueTable(item_ids=np.arange(n).astype(str).astype(object), blocks=blocks), rng.random(n)


def test_the_static_spelling_and_every_consumer_cover_the_table():
    assert get_args(LawKind) == tuple(LAWS)
    assert set(salience._WEIGHTS) == set(LAWS)
    assert synth.PLANTABLE_KINDS == kinds(plantable=True) and set(synth._PLANT) == set(synth.PLANTABLE_KINDS)
    assert set(reliability._COVARIATES) == set(get_args(law_kinds.Covariates))
    assert set(law_kinds._READS) == set(get_args(law_kinds.Covariates))
    assert set(law_kinds._JUDGED) == set(get_args(law_kinds.Evidence))
    assert salience.ALL_LAW_KINDS == tuple(LAWS)
    assert study.SPREAD_KINDS == ("per_emotion", "learned") and study.EXPONENT_KINDS == ("reliability",)
    law_kinds.check_table()


@pytest.mark.parametrize("kind", list(LAWS))
def test_every_kind_starts_at_plain_bci_and_validates_from_its_table_entry(kind):
    """The table's start is w = (1, 1) for every kind, its count, start and bounds agree, and the law reads the
    covariates the table names (built by reliability.law_covariates)."""
    spec = law_spec(kind)
    cues, x = _cues()
    cov = reliability.law_covariates(kind, cues, x)
    size = bci.law_size(cues, kind, cov)
    assert size == {"emotions": 4, "features": 3, None: 0}[spec.size]
    start = SalienceLaw.initial(kind, size)
    assert len(start) == SalienceLaw.n_params(kind, size) == len(SalienceLaw.bounds(kind, size))
    scale = (0.0,) * size + (1.0,) * size if spec.standardised else ()
    law = SalienceLaw.from_vector(kind, start, scale=scale)
    wf, wc = law.weights(cov)
    assert np.allclose(wf, 1.0) and np.allclose(wc, 1.0)
    with pytest.raises(ValueError, match=f"salience law '{kind}' takes"):
        SalienceLaw.from_vector(kind, np.zeros(len(start) + 1), scale=scale)
    if spec.prior:
        assert study.LawSettings().prior_sd(kind) == spec.prior_sd == getattr(study.LawSettings(), spec.prior)


def test_the_table_keeps_the_numbers_each_kind_had():
    """Start, bounds and the pool's parameter count: the values hard-coded before the table (same fits)."""
    lw, total = (-4.0, 4.0), (-4.0, 4.0 + math.log(2))
    assert SalienceLaw.bounds("logistic") == [total, (-8.0, 8.0), (-60.0, 60.0)]
    assert SalienceLaw.bounds("reliability") == [total, (-8.0, 8.0), (-10.0, 10.0)]
    assert SalienceLaw.bounds("hard") == [lw] * 4 and SalienceLaw.bounds("plain") == []
    assert SalienceLaw.bounds("per_emotion", 2) == [lw] * 6
    assert SalienceLaw.bounds("learned", 3) == [total, (-8.0, 8.0)] + [(-10.0, 10.0)] * 3
    assert np.array_equal(SalienceLaw.initial("learned", 2), [math.log(2), 0, 0, 0])
    assert [law_spec(k).n_pool(5) for k in LAWS if k != "plain"] == [1, 2, 2, 2, 6, 6]
    assert law_spec("logistic").restarts == (-6.0, 6.0) and not any(law_spec(k).restarts for k in LAWS
                                                                     if k != "logistic")


@pytest.mark.parametrize("rule", ["product", "pool"])
def test_every_kind_fits_with_the_count_the_table_gives(rule):
    cues, x = _cues(valence=False)
    for kind, spec in LAWS.items():
        cov = reliability.law_covariates(kind, cues, x)
        law = bci.fit_law(cues, rule, kind, cov, objective="kld")
        assert law.kind == kind
        assert len(law.params) == spec.n_params(bci.law_size(cues, kind, cov))


def test_unknown_kinds_are_refused_everywhere_with_the_known_ones():
    cues, x = _cues()
    for call in (lambda: SalienceLaw("cubic"), lambda: law_spec("cubic"),
                 lambda: bci.fit_law(cues, "product", "cubic", x),
                 lambda: reliability.law_covariates("cubic", cues, x),
                 lambda: study.LawSettings().prior_sd("cubic")):
        with pytest.raises(ValueError, match=f"unknown salience law 'cubic'; known kinds: {KNOWN}"):
            call()
    with pytest.raises(ValidationError, match=f"unknown salience law 'cubic'; known kinds: {KNOWN}"):
        synth.LawConfig(kind="cubic")
    with pytest.raises(ValidationError, match="'per_emotion' or 'learned'"):  # pydantic lists the Literal's kinds
        study.MethodConfig(name="m", rule="product", salience="cubic")


def test_the_generator_plants_exactly_the_plantable_kinds():
    for kind in synth.PLANTABLE_KINDS:
        assert synth.LawConfig(kind=kind).build(["happy", "sad"]).kind == kind
    with pytest.raises(ValidationError, match="'learned' cannot be planted.*plantable kinds: plain, control"):
        synth.LawConfig(kind="learned")


def _import_with(patch: str, module: str) -> subprocess.CompletedProcess:
    """Import `module` in a fresh interpreter after `patch` changed the table (or a consumer) in memory."""
    code = ("import vlm_salience.law_kinds as lk\nfrom dataclasses import replace\n" + patch
            + f"\nimport {module}\n")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO)


NEW_KIND = 'lk.LAWS["cubic"] = replace(lk.LAWS["logistic"], name="cubic", plantable={plantable}, {extra})'


@pytest.mark.parametrize("patch,module,says", [
    # a kind in the table only: the law has no weights for it
    (NEW_KIND.format(plantable=False, extra="restarts=()"), "vlm_salience.salience",
     r"SalienceLaw.weights \(salience.py\) does not match .*missing \['cubic'\]"),
    # a plantable kind the generator cannot build
    ("import vlm_salience.salience as s\n" + NEW_KIND.format(plantable=True, extra="restarts=()")
     + '\ns._WEIGHTS["cubic"] = s._logistic', "vlm_salience.data.synth",
     r"data/synth._PLANT .* missing \['cubic'\]"),
    # a kind the table no longer marks plantable, still built by the generator
    ('lk.LAWS["per_emotion"] = replace(lk.LAWS["per_emotion"], plantable=False)', "vlm_salience.data.synth",
     r"data/synth._PLANT .* unexpected \['per_emotion'\]"),
    # a sized kind whose prior the study's settings cannot set
    ("import vlm_salience.salience as s\n"
     + NEW_KIND.format(plantable=False, extra='size="features", per_size=1, prior="cubic_sd", prior_sd=1.0')
     + '\ns._WEIGHTS["cubic"] = s._logistic', "vlm_salience.study",
     r"study.LawSettings .* missing \['cubic_sd'\]"),
])
def test_a_mismatch_between_the_table_and_a_consumer_fails_at_import(patch, module, says):
    res = _import_with(patch, module)
    assert res.returncode != 0 and re.search(says, res.stderr), res.stderr[-2000:]


def test_an_incoherent_table_entry_is_refused(monkeypatch):
    for bad, says in ((dict(initial=(0.0,)), "initial and bounds need 3"),
                      (dict(pool="blend"), "pool 'blend' is not one of"),
                      (dict(prior="x_sd"), "a sized law has per_size > 0, a prior"),
                      (dict(evidence="exponent"), "exponent evidence needs")):
        monkeypatch.setitem(LAWS, "logistic", replace(LAWS["logistic"], **bad))
        with pytest.raises(RuntimeError, match=f"salience law 'logistic'.*{re.escape(says)}"):
            law_kinds.check_table()
    monkeypatch.setitem(LAWS, "cubic", replace(LAWS["logistic"], name="cubic"))
    with pytest.raises(RuntimeError, match=r"LawKind .* missing \['cubic'\]"):
        law_kinds.check_table()


def test_the_docs_show_the_table():
    page = (REPO / "docs" / "study.md").read_text()
    shown = re.search(r"<!-- law table:[^\n]*-->\n\n(.*?)\n\n<!-- end of law table -->", page, re.S)
    assert shown, "docs/study.md lost its law table markers"
    assert shown.group(1) == law_kinds.markdown_table(), "regenerate it: vlm_salience.law_kinds.markdown_table()"


def test_routing_and_gate_laws_are_the_tables_fixed_laws_of_expressivity():
    """Routing and OUS's gate read a clip's or an item's expressivity alone: their configs accept exactly the
    table's fixed-parameter laws of expressivity, so a sized kind cannot slip through to a plain fallback."""
    from typing import get_args

    from vlm_salience.ous.config import GateLaw
    from vlm_salience.salience import LAW_KINDS
    from vlm_salience.training.config import RoutingConfig

    assert set(get_args(GateLaw)) == set(LAW_KINDS)
    assert set(get_args(RoutingConfig.model_fields["salience"].annotation)) == set(LAW_KINDS)


def test_vlm_fusion_accepts_exactly_the_laws_of_expressivity_alone():
    """VLM-level fusion has one expressivity per item and no human face-only judgements: a reliability or learned
    law would fail mid-run after the model calls were paid for (its weights need (n, 2+) covariates), so the
    strategy is refused when the YAML loads, naming the kinds that work."""
    from vlm_salience.prompting.experiment import StrategyConfig

    for kind, spec in law_kinds.LAWS.items():
        if spec.covariates == "expressivity":
            assert StrategyConfig(name="f", fuse=["a", "b"], salience=kind).salience == kind
        else:
            with pytest.raises(ValueError, match=f"salience '{kind}' reads more than expressivity"):
                StrategyConfig(name="f", fuse=["a", "b"], salience=kind)
