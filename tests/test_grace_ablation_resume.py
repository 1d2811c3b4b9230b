"""GRACE's ablation runner resumes through `train_video`'s fingerprint check, never by "metrics.json exists"."""

from __future__ import annotations

import json

import vlm_salience.grace.ablation as ablation
import vlm_salience.video.report as video_report
import vlm_salience.video.train as video_train


def test_a_finished_run_left_by_other_settings_is_handed_to_train_video(tmp_path, monkeypatch):
    calls: list[tuple[list[str], bool]] = []

    def fake_train(config, overrides=(), *, resume=False, progress=False):
        calls.append((list(overrides), resume))

    monkeypatch.setattr(video_train, "train_video", fake_train)
    monkeypatch.setattr(video_report, "paired_comparison", lambda a, b, n_boot=1000: {"a": str(a), "b": str(b)})
    monkeypatch.setattr(ablation, "ablation_markdown", lambda doc: "")
    for name in ("grace", "no_text"):  # finished runs, as another `--quick` run would have left them
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.json").write_text(json.dumps({"methods": {"m": {"pooled": {}, "summary": {}}}}))
    doc = ablation.run_ablations("cfg.yaml", tmp_path, variants={"grace": [], "no_text": ["model.text.source=none"]},
                                 overrides=["engine.max_steps=5"], baseline=False)
    assert [c[1] for c in calls] == [True, True]  # both go to train_video, which keeps a fold only if it matches
    assert calls[1][0] == ["engine.max_steps=5", "model.text.source=none", f"out={tmp_path / 'no_text'}"]
    assert set(doc["paired"]) == {"no_text - grace"}
