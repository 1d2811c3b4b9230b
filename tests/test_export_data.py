"""`data export`: the instruction data other tools train on is the data we train on, split for split."""

from __future__ import annotations

import json

from vlm_salience.cli import main


def test_export_hf_and_sharegpt_match_the_training_rows(small_synth_corpus, tmp_path, capsys):
    from datasets import load_from_disk

    out = tmp_path / "sft"
    rc = main(["data", "export", "configs/train/experts_synthetic.yaml", "--out", str(out), "--quiet",
               "--set", f"data.config={small_synth_corpus}", "--adapter", "combined", "--json"])
    assert rc == 0
    printed = capsys.readouterr().out
    summary = json.loads(printed[printed.index("{"):])
    assert summary["files"]["sharegpt/combined_train.json"] > 0
    ids = {}
    for part in ("train", "test"):
        ds = load_from_disk(str(out / "hf" / "combined" / part))
        records = json.loads((out / "sharegpt" / f"combined_{part}.json").read_text())
        assert len(records) == len(ds) > 0
        assert [r["id"] for r in records] == list(ds["item_id"])
        for rec, row in zip(records, ds):
            user = " ".join(m["content"] for m in rec["messages"] if m["role"] == "user")
            assert user.count("<image>") == len(rec["images"])  # one tag per image, in place
            assert all(p.endswith(".png") for p in rec["images"])
            assert rec["messages"][-1]["role"] == "assistant"
            assert json.loads(rec["messages"][-1]["content"]) == json.loads(row["answer_fields"])
        assert all(len(r["images"]) == 1 for r in records)  # the combined prompt shows the face
        ids[part] = {r["id"] for r in records}
    assert not ids["train"] & ids["test"]  # no test item in the exported training data
    info = json.loads((out / "sharegpt" / "dataset_info.json").read_text())
    assert info["vlm_salience_combined_train"]["formatting"] == "sharegpt"
    assert info["vlm_salience_combined_train"]["columns"]["images"] == "images"


def test_export_refuses_an_unknown_adapter(small_synth_corpus, tmp_path, capsys):
    rc = main(["data", "export", "configs/train/experts_synthetic.yaml", "--out", str(tmp_path / "x"),
               "--set", f"data.config={small_synth_corpus}", "--adapter", "nope"])
    assert rc == 2 and "nope" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
