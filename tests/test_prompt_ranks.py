"""`prompt run` under `accelerate launch`: two processes (gloo on the CPU) each ask the tiny VLM their share of the
items, and rank 0 writes the files one process writes, with the same predictions; one answer cache is left; a
launch killed mid-run resumes from its ranks' shards, asking only the answers no rank had cached. Image corpora
and video data YAMLs (the shipped prompt_video_synthetic.yaml over clips). Two launches in all (the processes'
start dominates the time): one killed, one that resumes the image run and then runs the clips."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.ranks import calls, launch, no_plots

pytest.importorskip("accelerate")
REPO = Path(__file__).resolve().parents[1]
CLIPS = ("clips=14", "frames=8", "size=64", "folds=2", "layouts=[generic]")  # as test_prompting_video's corpus
IMAGE_TEMPLATES = ("face_only", "context_only", "chain_of_thought")


def _keys(db: Path) -> set[str]:
    with sqlite3.connect(db) as c:
        return {k for (k,) in c.execute("SELECT key FROM answers")}


def _image_yaml(path: Path, data: Path, model: Path, out: Path) -> Path:
    path.write_text(yaml.safe_dump({
        "name": "ranks", "data": str(data), "study": str(REPO / "configs" / "experiment" / "bci_synthetic.yaml"),
        "split": {"test_fraction": 0.25, "group": "participant", "seed": 0, "max_test_items": 8},
        "models": [{"backend": "hf", "name": "tiny", "path": str(model), "batch_size": 2}],
        "strategies": [{"name": "face_only", "template": "face_only"},
                       {"name": "context_only", "template": "context_only"},
                       {"name": "cot", "template": "chain_of_thought", "read": "generate", "max_new_tokens": 3},
                       {"name": "vlm_bci", "fuse": ["face_only", "context_only"]}],
        "out": str(out), "bootstrap": 20, "chunk": 2}))
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory, small_synth_corpus, synthetic_clips, tiny_vlms) -> dict:
    """One process, then two: an image run killed and resumed, and a clip run. Rank 1 is SIGKILLed at its fourth
    model call (context_only's items 7-8): face_only was gathered from both ranks (every answer committed), and rank
    1 had committed context_only's items 5-6; how far rank 0 got is up to the scheduler."""
    import torch

    from vlm_salience.cli import main

    tmp = tmp_path_factory.mktemp("prompt_ranks")
    model = tiny_vlms["qwen2_vl"]
    shipped = REPO / "configs" / "experiment" / "prompt_video_synthetic.yaml"
    data = synthetic_clips(*CLIPS)
    sets = [f"data={data}", f"models=[{{backend: hf, name: tiny, path: {model}, batch_size: 2}}]", "clip.frames=2",
            "max_test_clips=4", "report.n_boot=20", "chunk=2"]
    video_args = [x for s in sets for x in ("--set", s)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    patch = pytest.MonkeyPatch()
    no_plots(patch)
    try:
        one = {"image": tmp / "one_image", "video": tmp / "one_video"}
        assert main(["prompt", "run", str(_image_yaml(tmp / "one.yaml", small_synth_corpus, model, one["image"])),
                     "--quiet"]) == 0
        assert main(["prompt", "run", str(shipped), "--out", str(one["video"]), "--quiet", *video_args]) == 0
    finally:
        torch.set_num_threads(threads)
        patch.undo()
    two = {"image": tmp / "two_image", "video": tmp / "two_video"}
    image = ["prompt", "run", _image_yaml(tmp / "two.yaml", small_synth_corpus, model, two["image"])]
    with pytest.raises(Exception):
        launch(image, log=tmp / "killed", kill={1: 4})
    shards = {r: two["image"] / f"cache.rank{r}.sqlite" for r in (0, 1)}
    killed = {"predictions": (two["image"] / "predictions.csv").exists(),
              "shards": {r: len(_keys(s)) if s.is_file() else None for r, s in shards.items()}}
    launch(image, ["prompt", "run", shipped, "--out", two["video"], *video_args], log=tmp / "resumed")
    return {"one": one, "two": two, "killed": killed, "asked": calls(tmp / "resumed"), "clips": data}


def test_image_prompt_run_split_by_rank_equals_one_process_and_resumes_after_a_kill(runs):
    one, two, killed = runs["one"]["image"], runs["two"]["image"], runs["killed"]
    ids = pd.read_csv(one / "predictions.csv").query("method == 'tiny/face_only'").item_id.astype(str).tolist()
    assert len(ids) == 8
    # the killed launch wrote no report and left both shards: rank 1's face_only share and context_only's first
    # chunk, rank 0's face_only share and whatever it had finished since
    assert not killed["predictions"] and killed["shards"][1] == 6 and killed["shards"][0] >= 4
    asked = {r: [c for c in v if c["template"] in IMAGE_TEMPLATES] for r, v in runs["asked"].items()}
    assert not [c for r in (0, 1) for c in asked[r] if c["template"] == "face_only"]  # all cached
    assert [c["item"] for c in asked[1] if c["template"] == "context_only"] == ids[6:]  # what rank 1 lacked
    assert sum(len(v) for v in asked.values()) == 3 * 8 - sum(killed["shards"].values())  # nothing asked twice
    for rank, share in ((0, ids[:4]), (1, ids[4:])):  # a fresh strategy: rank r asks its share, once
        assert [c["item"] for c in asked[rank] if c["template"] == "chain_of_thought"] == share, rank
    # the files one process writes, the same predictions in the same order, and one cache with every answer
    assert (two / "predictions.csv").read_text() == (one / "predictions.csv").read_text()
    a, b = (json.loads((o / "metrics.json").read_text()) for o in (one, two))
    for doc in (a, b):
        for m in doc["methods"].values():
            m.pop("items_per_s", None)  # timings differ from run to run
    assert a["methods"] == b["methods"] and a["notes"] == b["notes"] and a["expressivity"] == b["expressivity"]
    assert sorted(p.name for p in two.glob("cache*.sqlite")) == ["cache.sqlite"]
    assert _keys(two / "cache.sqlite") == _keys(one / "cache.sqlite") and len(_keys(one / "cache.sqlite")) == 24


def test_video_prompt_run_split_by_rank_equals_one_process(runs):
    """The shipped prompt_video_synthetic.yaml over clips: each rank asks its half of each fold's test clips, once;
    rank 0 writes the run folder one process writes."""
    from vlm_salience.data.video import load_video_corpus

    one, two, run = runs["one"]["video"], runs["two"]["video"], "tiny__zero_shot"
    assert (two / run / "predictions.csv").read_text() == (one / run / "predictions.csv").read_text()
    m1, m2 = (json.loads((o / run / "metrics.json").read_text())["methods"] for o in (one, two))
    assert m1 == m2
    asked = {r: [c["item"] for c in v if c["template"] == "clip_emotion"] for r, v in runs["asked"].items()}
    for fold, parts in load_video_corpus(runs["clips"]).folds.items():
        test = list(parts["test"][:4])
        for rank, share in ((0, test[:2]), (1, test[2:])):
            assert [c for c in asked[rank] if c in test] == share, (fold, rank)
    assert sum(len(v) for v in asked.values()) == 8
    assert sorted(p.name for p in two.glob("cache*.sqlite")) == ["cache.sqlite"]
    assert _keys(two / "cache.sqlite") == _keys(one / "cache.sqlite")


def test_a_killed_launch_shards_are_merged_by_the_next_run_on_any_number_of_processes(tmp_path):
    """Shards a killed launch left (each rank's committed answers) are read by a run on one process too: merged
    into the one cache on opening, then deleted; a rank reads the cache and its own shard, and writes only that."""
    from vlm_salience.prompting.cache import AnswerCache, merge_shards, shard_paths

    path = tmp_path / "cache.sqlite"
    for rank, keys in ((0, ["a", "b"]), (1, ["c"])):
        shard = AnswerCache(path, rank=rank)
        shard.put_many({k: {"slots": {"emotion": [rank]}} for k in keys})
        shard.close()  # killed here: no merge
    rank1 = AnswerCache(path, rank=1)
    assert set(rank1.get_many(["a", "b", "c"])) == {"c"}  # its own shard, not another rank's
    rank1.close()
    assert [p.name for p in shard_paths(path)] == ["cache.rank0.sqlite", "cache.rank1.sqlite"]
    one = AnswerCache(path)
    assert one.get_many(["a", "b", "c", "d"]) == {"a": {"slots": {"emotion": [0]}}, "b": {"slots": {"emotion": [0]}},
                                                  "c": {"slots": {"emotion": [1]}}}
    assert len(one) == 3 and not shard_paths(path)
    one.close()
    assert merge_shards(path) == 0  # nothing left to merge; merging again is harmless
