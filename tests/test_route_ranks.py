"""`route` under `accelerate launch`: two processes (gloo on the CPU) each score their share of the items (every
expert, the mixed hard-routing batch, the validation items) or of the clips, the answers are gathered in order, and
rank 0 alone fits the gates and calibrations on validation and writes the files one process writes, with the same
predictions. One answer cache is left, and a run resumes from it asking only the answers it lacks (the shards of a
killed launch are merged first: tests/test_prompt_ranks.py kills one). One launch runs both routes."""

from __future__ import annotations

import json
import shutil
import sqlite3
from io import StringIO
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from tests.ranks import calls, launch, no_plots

pytest.importorskip("accelerate")
pytest.importorskip("peft")
REPO = Path(__file__).resolve().parents[1]
ROUTE_CLIPS = ("clips=24", "frames=8", "size=48", "folds=2", "layouts=[generic]", "classes=[happy,neutral,sad]",
               "law.kind=salience", "law.pairs=[]", "distractor_rate=0", "law.scene_agreement=0.34")
CLIP_METHODS = ("expert__face", "expert__context", "routed__hard", "routed__soft", "routed__learned",
                "control__shuffled")


def _keys(db: Path) -> set[str]:
    with sqlite3.connect(db) as c:
        return {k for (k,) in c.execute("SELECT key FROM answers")}


def _random_adapters(model: Path, out: Path) -> None:
    """A face and a context LoRA with random weights (no training: routing reads them like trained ones)."""
    import torch
    from peft import LoraConfig, get_peft_model

    from vlm_salience.models.loading import ModelConfig, load_vlm
    from vlm_salience.training.config import LoraConfig as OurLora
    from vlm_salience.training.lora import target_modules

    for seed, name in ((1, "face"), (2, "context")):
        torch.manual_seed(seed)
        base = load_vlm(ModelConfig(name="base", path=str(model))).model
        peft = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=target_modules(base, OurLora()),
                                               init_lora_weights=False, task_type="CAUSAL_LM"))
        peft.save_pretrained(str(out / "adapters" / name))


def _train_yaml(path: Path, data: Path, model: Path, out: Path) -> Path:
    path.write_text(yaml.safe_dump({
        "name": "ranks", "model": {"name": "tiny", "path": str(model)}, "data": {"config": str(data)},
        "study": str(REPO / "configs" / "experiment" / "bci_synthetic.yaml"),
        "split": {"test_fraction": 0.25, "validation_fraction": 0.15, "group": "participant"},
        "adapters": [{"name": "face", "subset": "expressive"}, {"name": "context", "subset": "subtle"}],
        "optim": {"batch_size": 2}, "tracker": "none",
        "routing": {"face": "face", "context": "context", "single": [], "gate_features": ["outcome"]},
        "out": str(out)}))
    return path


def _metrics(folder: Path) -> dict:
    doc = json.loads((folder / "metrics.json").read_text())
    for m in doc["methods"].values():
        m.pop("items_per_s", None)  # timings differ from run to run
    doc.pop("config")
    return doc


def _clip_corpus(tmp: Path) -> tuple[Path, Path]:
    """24 salience-law clips and their frame cache (4 segments, 32-px streams)."""
    from vlm_salience.config import load_config
    from vlm_salience.data.video.synth import ClipSynthConfig, write_clip_corpus
    from vlm_salience.video.prepare import load_prepare_config, prepare_corpus

    data = write_clip_corpus(load_config(REPO / "configs" / "synth" / "clips.yaml", ClipSynthConfig,
                                         list(ROUTE_CLIPS)), tmp / "clips", progress=False)
    (tmp / "haar.yaml").write_text(yaml.safe_dump({"kind": "haar", "name": "haar", "upscale_below": 32,
                                                   "min_size": 16}))
    (tmp / "prepare.yaml").write_text(yaml.safe_dump({
        "n_segments": 4, "candidates_per_segment": 1,
        "streams": {"face_size": 32, "scene_size": 32, "mask_fill": "black", "mask_pad": 0.3,
                    "detection": {"detector": str(tmp / "haar.yaml"), "max_side": None}}}))
    prepare_corpus(data, load_prepare_config(tmp / "prepare.yaml"), tmp / "cache", progress=False)
    return data, tmp / "cache"


@pytest.fixture(scope="module")
def runs(tmp_path_factory, small_synth_corpus, tiny_vlms) -> dict:
    """Both routes on one process, then on two in one launch. Items: random face and context LoRAs on the tiny
    Qwen2-VL. Clips: a pixel face expert (each rank pools its share of the frames; rank 0 fits) and the tiny VLM as
    the context expert (each rank scores its share)."""
    import torch

    from vlm_salience.cli import main

    tmp = tmp_path_factory.mktemp("route_ranks")
    model = tiny_vlms["qwen2_vl"]
    one, two = tmp / "one", tmp / "two"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    patch = pytest.MonkeyPatch()
    no_plots(patch)
    try:
        _random_adapters(model, one)
        shutil.copytree(one / "adapters", two / "adapters")
        data, cache = _clip_corpus(tmp)
        sets = [f"data={data}", f"frame_cache={cache}", "report.n_boot=20", "report.figures=false",
                "context={name: context, stream: scene, kind: vlm, mode: images, model: {backend: hf, name: tiny, "
                f"path: {model}, batch_size: 1}}}}"]
        clip_args = [x for s in sets for x in ("--set", s)]
        shipped = REPO / "configs" / "experiment" / "route_clips_synthetic.yaml"
        assert main(["route", str(_train_yaml(tmp / "one.yaml", small_synth_corpus, model, one)), "--quiet"]) == 0
        assert main(["route", str(shipped), "--out", str(one / "clips"), "--quiet", *clip_args]) == 0
    finally:
        torch.set_num_threads(threads)
        patch.undo()
    config = _train_yaml(tmp / "two.yaml", small_synth_corpus, model, two)
    launch(["route", config], ["route", shipped, "--out", two / "clips", *clip_args], log=tmp / "log")
    return {"one": one, "two": two, "config": config, "asked": calls(tmp / "log")}


def test_route_split_by_rank_equals_one_process(runs):
    one, two = runs["one"] / "routing", runs["two"] / "routing"
    a, b = _metrics(one), _metrics(two)  # fits and calibrations on the same validation answers, on rank 0
    assert a["methods"] == b["methods"] and a["calibration"] == b["calibration"] and a["gate"] == b["gate"]
    assert (two / "predictions.csv").read_text() == (one / "predictions.csv").read_text()
    assert sorted(p.name for p in two.glob("answers*.sqlite")) == ["answers.sqlite"]
    assert _keys(two / "answers.sqlite") == _keys(one / "answers.sqlite")
    asked = {r: [c for c in v if c["template"] == "combined"] for r, v in runs["asked"].items()}
    # every prompt asked once, by one rank: zero-shot, each expert and hard routing on the 8 test items, both
    # experts on the validation items
    assert sum(len(v) for v in asked.values()) == len(_keys(one / "answers.sqlite"))
    mixed = [{c["item"] for c in asked[r] if c["adapter"]} for r in (0, 1)]  # hard routing: one mixed pass each
    assert len(mixed[0]) == len(mixed[1]) == 4 and not mixed[0] & mixed[1]


def test_route_resumes_from_the_one_cache_asking_only_what_it_lacks(scored_prompts, runs, monkeypatch):
    """Answers lost from the cache (a shard deleted, a launch killed before its chunk was committed) are the only
    ones asked again; the report is the same."""
    from vlm_salience.cli import main

    two = runs["two"] / "routing"
    before = (two / "predictions.csv").read_text()
    with sqlite3.connect(two / "answers.sqlite") as c:
        lost = [k for (k,) in c.execute("SELECT key FROM answers ORDER BY key LIMIT 5")]
        c.executemany("DELETE FROM answers WHERE key = ?", [(k,) for k in lost])
    asked = scored_prompts
    no_plots(monkeypatch)
    assert main(["route", str(runs["config"]), "--quiet"]) == 0
    assert len(asked) == 5
    # the same report: the 5 answers asked again in smaller batches agree to float rounding and fit tolerance
    a, b = pd.read_csv(StringIO(before)), pd.read_csv(two / "predictions.csv")
    numeric = a.select_dtypes("number").columns
    assert list(a.columns) == list(b.columns) and a.drop(columns=numeric).equals(b.drop(columns=numeric))
    # (the fits on validation answers carry the re-scored answers' rounding on to the optimiser's tolerance: 1.6e-7
    # here in one process, more than 1e-6 in one CI run under xdist; a wrong answer reused moves far more)
    assert np.allclose(a[numeric], b[numeric], atol=1e-4, equal_nan=True)


def test_clip_routing_split_by_rank_equals_one_process(runs):
    """Rank 0 calibrates on the validation clips and writes what one process writes; each clip asked once."""
    one, two = runs["one"] / "clips", runs["two"] / "clips"
    r1, r2 = (json.loads((o / "routing.json").read_text().replace(str(o), "OUT")) for o in (one, two))
    assert r1 == r2  # the same table, paired differences, calibration per fold (run folders named alike)
    for method in CLIP_METHODS:
        assert (two / method / "predictions.csv").read_text() == (one / method / "predictions.csv").read_text()
    asked = [{c["item"] for c in runs["asked"][r] if c["template"] == "clip_emotion"} for r in (0, 1)]
    assert asked[0] and asked[1] and not asked[0] & asked[1]  # each rank its own share of each fold's clips
    n = sum(1 for r in (0, 1) for c in runs["asked"][r] if c["template"] == "clip_emotion")
    assert n == len(_keys(one / "answers.sqlite"))  # each clip asked once (a clip in two folds: from the cache)
    assert sorted(p.name for p in two.glob("answers*.sqlite")) == ["answers.sqlite"]
    assert _keys(two / "answers.sqlite") == _keys(one / "answers.sqlite")
