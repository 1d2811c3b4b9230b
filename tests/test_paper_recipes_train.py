"""The authors' OUS recipe (configs/video/ous_dfew_authors.yaml) runs end to end through the engine on the
synthetic clips and a tiny encoder: Adam, ReduceLROnPlateau on the validation loss once an epoch, one learning
rate that every parameter group honours, the LSTM across the pair and per-epoch evaluation. Only the corpus, the
encoder and the sizes are swapped; the optimiser and schedule are the recipe's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.slow]


def test_authors_ous_recipe_trains_with_adam_and_plateau(tmp_path, tiny_encoder, law_clips):
    from vlm_salience.video.train import train_video

    enc = tiny_encoder("configs/models/tiny_clip.yaml")
    overrides = [f"data.config={law_clips['data']}", f"data.cache={law_clips['cache']}",
                 f"data.prepare={law_clips['prepare']}", "data.n_segments=4", "data.folds=[set_1]",
                 "data.overrides=[]", f"model.encoder.path={enc}", "model.class_text={}", "model.context_tokens=2",
                 "model.temporal={layers: 1, heads: 4, mlp_dim: 32}",
                 "model.fusion={layers: 2, heads: 4, mlp_dim: 32}", "optim.epochs=3", "optim.batch_size=16",
                 "optim.grad_accum=1", "optim.plateau.patience=0", "optim.plateau.threshold=0.5",
                 'precision="no"', "tracker=none", "checkpoint.every_steps=null", "report.n_boot=10",
                 "report.tsne=false", "log_every=1", f"out={tmp_path / 'run'}"]
    out = train_video(ROOT / "configs/video/ous_dfew_authors.yaml", overrides, progress=False)
    fold = out["folds"][0] if isinstance(out["folds"], list) else next(iter(out["folds"].values()))
    history = fold["history"]
    # evaluated after each of the first two epochs and at the end
    assert len(history) == 3 and all("eval/loss" in h for h in history)
    logs = [json.loads(x) for p in (tmp_path / "run/logs").rglob("metrics.jsonl") for x in p.read_text().splitlines()]
    rates = {rec["step"]: rec["train/lr"] for rec in logs if "train/lr" in rec}
    per_epoch = len(rates) // 3
    # patience 0, threshold 0.5 (relative): the loss cannot improve by half, so the rate falls by x 0.3 after the
    # second epoch's evaluation (the first sets the best), and not before
    assert len(rates) == 3 * per_epoch and per_epoch >= 1
    assert rates[2 * per_epoch] == pytest.approx(2e-4) and rates[2 * per_epoch + 1] == pytest.approx(2e-4 * 0.3)
