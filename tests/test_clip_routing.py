"""Route on clips: salience-routed face and context experts on the synthetic salience-law clips, out of fold with
paired intervals. The experts are the deterministic pixel experts (a logistic regression on pooled frames of the
face-crop stream and of the masked scene stream): the test checks the routing and its folds, not a VLM.

The corpus (3 classes, one per scene polarity, 120 clips, 2 folds): half the faces are subtle (apex intensity
0.05-0.2). Law on: a subtle clip's scene shows its class's polarity, an expressive clip's scene is nearly random
(agreement 0.34), so the face decides expressive clips and the scene subtle ones, and routing by expressivity
must beat the better expert alone. Law off: every scene is random, and no routed variant may beat the face expert."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SALIENCE_CLIPS = ("clips=120", "frames=8", "size=48", "folds=2", "layouts=[generic]", "classes=[happy,neutral,sad]",
                  "law.kind=salience", "law.pairs=[]", "distractor_rate=0", "law.scene_agreement=0.34")


@pytest.fixture(scope="module")
def routed(tmp_path_factory) -> dict[str, dict]:
    """Both corpora written, prepared (4 segments, 32-px streams, the face masked black) and routed."""
    from vlm_salience.config import load_config
    from vlm_salience.data.video.synth import ClipSynthConfig, write_clip_corpus
    from vlm_salience.training.clip_routing import ClipRoutingConfig, route_clips
    from vlm_salience.video.prepare import load_prepare_config, prepare_corpus

    out = {}
    for law in ("true", "false"):
        w = tmp_path_factory.mktemp(f"route_clips_{law}")
        cfg = load_config(REPO / "configs" / "synth" / "clips.yaml", ClipSynthConfig,
                          [*SALIENCE_CLIPS, f"law.enabled={law}"])
        data = write_clip_corpus(cfg, w / "clips", progress=False)
        (w / "haar.yaml").write_text(yaml.safe_dump({"kind": "haar", "name": "haar", "upscale_below": 32,
                                                      "min_size": 16}))
        (w / "prepare.yaml").write_text(yaml.safe_dump({
            "n_segments": 4, "candidates_per_segment": 1,
            "streams": {"face_size": 32, "scene_size": 32, "mask_fill": "black", "mask_pad": 0.3,
                        "detection": {"detector": str(w / "haar.yaml"), "max_side": None}}}))
        prepare_corpus(data, load_prepare_config(w / "prepare.yaml"), w / "cache", progress=False)
        rc = ClipRoutingConfig.model_validate({
            "name": f"law_{law}", "data": str(data), "frame_cache": str(w / "cache"), "frames": 4,
            "face": {"name": "face", "stream": "face"}, "context": {"name": "context", "stream": "scene"},
            "expressivity": {"source": "column"}, "out": str(w / "out"),
            "report": {"n_boot": 300, "figures": False}})
        out[law] = {"summary": route_clips(rc, progress=False), "data": data, "out": w / "out", "cfg": rc}
    return out


def test_route_on_clips_law_on_beats_the_better_expert_law_off_does_not(routed):
    on, off = routed["true"]["summary"], routed["false"]["summary"]
    assert on["best_single"] == "expert/context" and off["best_single"] == "expert/face"
    for m in ("routed/hard", "routed/soft", "routed/learned"):
        d = on["table"]["runs"][m]["vs_reference"]["uar"]
        assert d["a_better"] and d["ci95"][0] > 0, (m, d)  # law on: beats the better expert alone
        assert on["vs_control"][m]["uar"]["a_better"], m  # and the shuffled-expressivity control
        assert not off["table"]["runs"][m]["vs_reference"]["uar"]["a_better"], m  # law off: never
    assert on["routed_beats_best_single"] == {"routed/hard": True, "routed/soft": True, "routed/learned": True}
    assert not any(off["routed_beats_best_single"].values())
    # calibrated on validation: the more expressive the clip, the larger the face expert's share
    for fold in on["calibration"].values():
        assert fold["soft_law"]["expressivity"] > 0


def test_route_on_clips_folds(routed):
    """Validation is carved from the training fold only; every method predicts exactly each fold's test clips;
    the run folders are video runs `video compare` reads (same clips, one table)."""
    from vlm_salience.data.video import load_video_corpus
    from vlm_salience.data.video.records import carve_validation
    from vlm_salience.video.report import compare_runs

    r = routed["true"]
    corpus = load_video_corpus(r["data"])
    for fold, parts in corpus.folds.items():
        fit, val = carve_validation(corpus, list(parts["train"]), 0.25, 0)
        assert not (set(fit) | set(val)) & set(parts["test"]) and not set(fit) & set(val)
        assert set(fit) | set(val) == set(parts["train"])
        assert r["summary"]["calibration"][fold]["validation_clips"] == len(val)
    expected = sorted((f, c) for f, p in corpus.folds.items() for c in p["test"])
    folders = {}
    for name in ("expert__face", "expert__context", "routed__hard", "routed__soft", "routed__learned",
                 "control__shuffled"):
        df = pd.read_csv(r["out"] / name / "predictions.csv", dtype={"fold": str, "clip_id": str})
        assert sorted(zip(df.fold, df.clip_id)) == expected
        folders[name] = r["out"] / name
    assert compare_runs(folders, n_boot=10)["n_clips"] == len(expected)
    doc = json.loads((r["out"] / "routing.json").read_text())
    assert doc["best_single"] == "expert/context" and "beats the better expert" in (r["out"] / "report.md").read_text()


def test_fer_expressivity_of_clips(routed):
    """expressivity.source fer: the FER2013 classifier's 1 - P(neutral) pooled over each clip's cached face crops
    (OUS's gate), in [0, 1], cached beside the frame cache (a second call computes nothing)."""
    import numpy as np

    from vlm_salience.data.video import load_video_corpus
    from vlm_salience.training.clip_routing import clip_expressivity

    r = routed["true"]
    cfg = r["cfg"].model_copy(update={"expressivity": r["cfg"].expressivity.model_copy(update={"source": "fer"})})
    corpus = load_video_corpus(r["data"])
    ids = [c.clip_id for c in corpus.clips[:12]]
    x = clip_expressivity(cfg, corpus, ids)
    assert x.shape == (12,) and ((x >= 0) & (x <= 1)).all() and np.isfinite(x).all()
    cached = list((Path(cfg.frame_cache) / "expressivity").glob("fer_expressivity-*.json"))
    assert len(cached) == 1 and len(json.loads(cached[0].read_text())["clips"]) == 12
    assert np.allclose(clip_expressivity(cfg, corpus, ids), x)


def test_vlm_expert_scores_the_stream_frames(routed, tiny_vlms, tmp_path, monkeypatch):
    """kind vlm: a VLM's label scoring over the stream's cached frames, one distribution over the corpus's classes
    per clip, answers cached (a second call asks the model nothing)."""
    import numpy as np

    from vlm_salience.data.video import load_video_corpus
    from vlm_salience.prompting.hf_backend import HFBackend
    from vlm_salience.training.clip_routing import ExpertSpec, ClipFrames, expert_probs

    r = routed["true"]
    corpus = load_video_corpus(r["data"])
    ids = [c.clip_id for c in corpus.clips[:3]]
    spec = ExpertSpec(name="vlm_scene", stream="scene", kind="vlm", mode="images",
                      model={"backend": "hf", "name": "tiny", "path": str(tiny_vlms["qwen2_vl"]), "batch_size": 3})
    frames = ClipFrames(r["cfg"].frame_cache, corpus, 2)
    p = expert_probs(spec, frames, corpus, [], ids, tmp_path / "answers.sqlite")
    assert list(p) == ids and all(v.shape == (3,) and np.isclose(v.sum(), 1) for v in p.values())
    monkeypatch.setattr(HFBackend, "score", lambda *a, **k: (_ for _ in ()).throw(AssertionError("asked again")))
    again = expert_probs(spec, frames, corpus, [], ids, tmp_path / "answers.sqlite")
    assert all(np.allclose(again[c], p[c]) for c in ids)
