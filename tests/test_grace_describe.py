"""GRACE's `describe_video` itself (CATE: coarse VLM descriptions of the cached clips, refined by the lexicon rules),
end to end from its YAML: with a tiny random Qwen2-VL, the answer cache (a second call generates nothing; a
changed prompt or budget generates again), resume after an interruption, and, with a backend whose answers we
choose, the fallbacks for empty and unparseable descriptions and the truncation to the text encoder's window,
counted where GRACE reads the descriptions.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_torch_thread")
N = 6  # clips described (describe's `limit`)


@pytest.fixture(scope="module")
def grace_encoder(request, tmp_path_factory) -> Path:
    """configs/grace/tiny_clip.yaml (GRACE's text window), from conftest's shared builder where it has one."""
    try:
        return request.getfixturevalue("tiny_encoder")("configs/grace/tiny_clip.yaml")
    except pytest.FixtureLookupError:
        from vlm_salience.config import load_config
        from vlm_salience.models.encoders import TinyEncoderConfig, build_tiny_encoder

        return build_tiny_encoder(load_config(ROOT / "configs/grace/tiny_clip.yaml", TinyEncoderConfig),
                                  tmp_path_factory.mktemp("grace_enc") / "clip")


def _config(tmp: Path, law_clips: dict, model: dict, out: str = "d", **describe) -> Path:
    """A describe YAML over the prepared law clips (the fixture's own prepare settings, so nothing is re-prepared)."""
    cfg = {"video": str(ROOT / "configs/video/grace_synthetic.yaml"),
           "video_overrides": [f"data.config={law_clips['data']}", f"data.cache={law_clips['cache']}",
                               f"data.prepare={law_clips['prepare']}", "data.n_segments=4", "data.folds=[set_1]"],
           "model": model, "describe": {"frames": 2, "image_size": 56, "stream": "face", "refine": "rules",
                                        "max_new_tokens": 6, "chunk": 2, **describe},
           "out": str(tmp / out), "limit": N}
    path = tmp / f"describe_{out}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _read(res: dict) -> pd.DataFrame:
    return pd.read_csv(res["path"], dtype=str, keep_default_na=False)


class Counter:
    """Wraps HFBackend.generate: counts the prompts generated; can raise on a given call (an interruption)."""

    def __init__(self, real, fail_on_call: int | None = None) -> None:
        self.real, self.fail_on_call, self.calls, self.prompts = real, fail_on_call, 0, 0

    def __call__(self, backend, prompts, n, **kw):
        self.calls += 1
        if self.fail_on_call is not None and self.calls == self.fail_on_call:
            raise KeyboardInterrupt("interrupted")
        self.prompts += len(prompts)
        return self.real(backend, prompts, n, **kw)


def _patch(monkeypatch, cls, counter: Counter) -> None:
    monkeypatch.setattr(cls, "generate", lambda self, prompts, n, **kw: counter(self, prompts, n, **kw))


def test_describe_video_with_a_tiny_vlm_caches_resumes_and_keys_on_the_prompt(tiny_vlms, law_clips, tmp_path,
                                                                               monkeypatch):
    from vlm_salience.grace.text import (DescribeConfig, coarse_prompts, load_lexicon, middle_frames,
                                         motion_profile, refine_rules, usable)
    from vlm_salience.grace.text import describe_video
    from vlm_salience.prompting.hf_backend import HFBackend
    from vlm_salience.prompting.templates import load_template
    from vlm_salience.video.cache import ClipCache
    from vlm_salience.video.task import FrameStore

    model = {"backend": "hf", "name": "tiny-qwen2-vl", "path": str(tiny_vlms["qwen2_vl"]), "dtype": "float32",
             "batch_size": 4}
    real = HFBackend.generate
    count = Counter(real)
    _patch(monkeypatch, HFBackend, count)
    res = describe_video(_config(tmp_path, law_clips, model), progress=False)
    df = _read(res)
    assert len(df) == N and count.prompts == N and count.calls == N // 2  # chunks of 2 clips
    assert sum(res["counts"].values()) == N

    # what describe wrote is the VLM's answer on the clip's cached frames, refined by the lexicon rules
    store = FrameStore(ClipCache(law_clips["cache"]), 64, streams=("face",))
    ids = list(df["clip_id"])
    assert ids == sorted(ids) and all(i in store.cache for i in ids)
    cfg = DescribeConfig(frames=2, image_size=56, max_new_tokens=6)
    prompts = coarse_prompts(ids, store, cfg, load_template(cfg.coarse_template))
    direct = [a.strip() for a in real(_backend(model), prompts, 6)]
    assert list(df["coarse"]) == direct
    lex = load_lexicon()
    for _, row in df.iterrows():
        expected = refine_rules(row["coarse"], lex, motion_profile(middle_frames(store.get(row["clip_id"])))) or ""
        assert row["refined"] == expected
        assert row["status"] == ("ok" if usable(expected) else "empty" if not usable(row["coarse"])
                                 else "unparseable")

    # a second call generates nothing and writes the same table
    again = Counter(real)
    _patch(monkeypatch, HFBackend, again)
    assert _read(describe_video(_config(tmp_path, law_clips, model), progress=False)).equals(df)
    assert again.prompts == 0

    # another prompt (same frames, same model), or another budget: every clip generated again
    tpl = tmp_path / "coarse_v2.j2"
    tpl.write_text(load_template("grace_coarse").path.read_text().replace("Describe what the face does.",
                                                                          "Describe the face's movements."))
    other = Counter(real)
    _patch(monkeypatch, HFBackend, other)
    describe_video(_config(tmp_path, law_clips, model, coarse_template=str(tpl)), progress=False)
    assert other.prompts == N
    budget = Counter(real)
    _patch(monkeypatch, HFBackend, budget)
    describe_video(_config(tmp_path, law_clips, model, max_new_tokens=5), progress=False)
    assert budget.prompts == N

    # an interrupted run keeps the chunk it finished; the next run generates only the rest, same table
    broken = Counter(real, fail_on_call=2)
    _patch(monkeypatch, HFBackend, broken)
    with pytest.raises(KeyboardInterrupt):
        describe_video(_config(tmp_path, law_clips, model, out="r"), progress=False)
    assert broken.prompts == 2 and not (tmp_path / "r" / "descriptions.csv").exists()
    resumed = Counter(real)
    _patch(monkeypatch, HFBackend, resumed)
    assert _read(describe_video(_config(tmp_path, law_clips, model, out="r"), progress=False)).equals(df)
    assert resumed.prompts == N - 2


def _backend(model: dict):
    from vlm_salience.models.loading import ModelConfig, load_vlm
    from vlm_salience.prompting.hf_backend import HFBackend

    return HFBackend(load_vlm(ModelConfig(name=model["name"], path=model["path"])), batch_size=4)


class Chosen:
    """A backend whose answers we choose, by the clip's rank: a good one, a long unparseable one, an empty one,
    a symbol soup, a long one with cues, and a short unparseable one."""

    def __init__(self, ids: list[str]) -> None:
        words = " ".join(["the camera is static and the lighting is even"] * 30)  # >> the text window
        answers = ["the person smiles and the head turns", words, "   ", "?!... --", "the brows raise " + words,
                   "a cat"]
        self.answers = dict(zip(ids, answers))

    def fingerprint(self) -> str:
        return "chosen-answers"

    def generate(self, prompts, n, **_):
        return [self.answers[p.item_id] for p in prompts]


@pytest.mark.parametrize("fallback", ["coarse", "prompt"])
def test_describe_video_fallbacks_and_truncation_are_counted(law_clips, grace_encoder, tmp_path,
                                                             monkeypatch, fallback):
    import vlm_salience.prompting.experiment as experiment
    from vlm_salience.grace.text import describe_video, load_lexicon
    from vlm_salience.video.cache import ClipCache
    from vlm_salience.video.config import load_video_config
    from vlm_salience.video.task import FrameStore
    from vlm_salience.video.train import load_corpus, make_task

    ids = sorted(ClipCache(law_clips["cache"]).ids())[:N]  # set_1's train and test parts hold every clip
    chosen = Chosen(ids)
    monkeypatch.setattr(experiment, "make_backend", lambda entry, progress=True: chosen)
    model = {"backend": "hf", "name": "unused", "path": "unused"}
    res = describe_video(_config(tmp_path, law_clips, model), progress=False)
    df = _read(res).set_index("clip_id")
    assert list(df.index) == ids
    assert list(df["status"]) == ["ok", "unparseable", "empty", "empty", "ok", "unparseable"]
    assert res["counts"] == {"ok": 2, "unparseable": 2, "empty": 2}
    assert df.loc[ids[0], "refined"].startswith("AU12 lip corner puller, AU6 cheek raiser; head rotation")
    assert df.loc[ids[1], "refined"] == "" and df.loc[ids[1], "coarse"] == chosen.answers[ids[1]]

    # GRACE reads the table: each fallback counted, texts beyond the encoder's window counted as truncated
    data = [f"data.config={law_clips['data']}", f"data.cache={law_clips['cache']}",
            f"data.prepare={law_clips['prepare']}", "data.n_segments=4", "data.folds=[set_1]"]
    cfg, task_cls = load_video_config(ROOT / "configs/video/grace_synthetic.yaml", data + [
        f"model.encoder.path={grace_encoder}", "model.text.source=descriptions",
        f"model.text.descriptions={res['path']}", f"model.text.fallback={fallback}"])
    corpus = load_corpus(cfg)
    store = FrameStore(ClipCache(cfg.data.cache), 64, streams=("face",))
    task = make_task(cfg, task_cls, corpus, "set_1", store)
    texts = task.clip_texts()
    rep = task.text_report
    n_all = len(store.cache.ids())
    lex = load_lexicon()
    paths = rep["paths"]
    assert rep["clips"] == n_all and paths["refined"] == 2 and paths["unparseable"] == n_all - 2
    assert paths["empty_coarse"] == n_all - 4  # the clips describe never saw have no text at all
    if fallback == "coarse":
        assert paths["coarse_fallback"] == 2 and paths["prompt_fallback"] == n_all - 4
        assert texts[ids[1]] == chosen.answers[ids[1]] and texts[ids[5]] == "a cat"
        assert rep["truncated"] == 1  # the long unparseable answer, kept as the coarse fallback
    else:
        assert paths["coarse_fallback"] == 0 and paths["prompt_fallback"] == n_all - 2
        assert texts[ids[1]] == lex.prompt_fallback
        assert rep["truncated"] == 0
    assert texts[ids[2]] == texts[ids[3]] == lex.prompt_fallback  # empty and symbol soup: never dropped
    assert set(texts) == set(store.cache.ids())
    long_refined = df.loc[ids[4], "refined"]  # cues found in a long answer: the refined text is short
    assert long_refined.startswith("AU1 AU2 inner and outer brow raiser") and texts[ids[4]] == long_refined
    assert len(task.tokenizer().lengths([long_refined])) == 1 and task.tokenizer().lengths([long_refined])[0] <= \
        rep["window"] < task.tokenizer().lengths([chosen.answers[ids[1]]])[0]
    shutil.rmtree(tmp_path / "d")
