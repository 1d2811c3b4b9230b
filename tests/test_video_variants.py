"""The video model registry and the one variants runner: a model defined in this file registers itself, trains on
the synthetic clips, is evaluated and compared beside its variant; unknown kinds name the known ones; a variant of
another kind keeps the settings it shares; variants resume through `train_video`'s fingerprint check, never by
"metrics.json exists"."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import pytest
import torch
import yaml

from vlm_salience.config import StrictModel
from vlm_salience.errors import ConfigError
from vlm_salience.video.config import VideoTrainConfig, load_video_config
from vlm_salience.video.registry import list_video_models, register_video_model, video_model
from vlm_salience.video.task import VideoClassifierTask

ROOT = Path(__file__).resolve().parents[1]


# -- a new video model, defined here: nothing under vlm_salience/video/ knows it -----------------------------------


class MeanColourConfig(StrictModel):
    kind: Literal["mean_colour"] = "mean_colour"
    hidden: int = 8


class MeanColourTrainConfig(VideoTrainConfig[MeanColourConfig]):
    pass


class MeanColourModel(torch.nn.Module):
    """A clip's mean face colour -> a small MLP -> class logits; its hidden layer is the clip feature."""

    def __init__(self, n_classes: int, hidden: int) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Linear(3, hidden), torch.nn.Tanh())
        self.head = torch.nn.Linear(hidden, n_classes)

    def forward(self, face: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.body(face.float().mean(dim=(1, 2, 3)) / 255.0)  # (B, T, S, S, 3) uint8 -> (B, hidden)
        return {"logits": self.head(feats), "features": feats}


@register_video_model("mean_colour")
class MeanColourTask(VideoClassifierTask):
    config_class = MeanColourTrainConfig

    def build_model(self) -> torch.nn.Module:
        torch.manual_seed(self.cfg.seed)
        return MeanColourModel(len(self.classes), self.cfg.model.hidden)


def _config(folder: Path, law: dict[str, Path]) -> Path:
    cfg = {"name": "tiny", "data": {"config": str(law["data"]), "cache": str(law["cache"]),
                                    "prepare": str(law["prepare"]), "folds": ["set_1"], "n_segments": 4,
                                    "validation_fraction": 0.15, "memory_cache_mb": 64},
           "model": {"kind": "mean_colour", "hidden": 4},
           "variants": [{"name": "small"}, {"name": "wide", "set": {"hidden": 32}}],
           "optim": {"lr": 0.05, "batch_size": 16, "max_steps": 6, "schedule": "constant", "warmup_ratio": 0.0},
           "eval": {"every_steps": 3}, "checkpoint": {"every_steps": None}, "tracker": "none",
           "report": {"n_boot": 50, "tsne": False}, "seed": 0, "out": str(folder / "run")}
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_a_model_registered_in_a_test_file_trains_evaluates_and_is_compared(law_clips, tmp_path):
    from vlm_salience.video.variants import eval_variants, train_variants

    assert "mean_colour" in list_video_models() and video_model("mean_colour") is MeanColourTask
    doc = train_variants(_config(tmp_path, law_clips), progress=False)
    assert set(doc["variants"]) == {"small", "wide"} and doc["compare_to"] == "small"
    assert {v["kind"] for v in doc["variants"].values()} == {"mean_colour"}
    assert doc["variants"]["wide"]["set"] == {"hidden": 32}
    uar = {k: v["all"]["uar"]["value"] for k, v in doc["variants"].items()}
    paired = doc["paired"]["wide"]["all"]["uar"]  # the same test clips: the paired point is the plain difference
    assert set(doc["paired"]) == {"wide"} and paired["diff"] == pytest.approx(uar["wide"] - uar["small"])
    assert doc["paired"]["wide"]["all"]["n"] == doc["variants"]["wide"]["all"]["n"] > 0
    assert all(doc["convergence"][n]["set_1"] for n in ("small", "wide"))  # validation UAR every 3 steps
    run = tmp_path / "run"
    for name, hidden in (("small", 4), ("wide", 32)):  # each variant is an ordinary run with its own config
        cfg, task_cls = load_video_config(run / "variants" / name / "config.yaml")
        assert task_cls is MeanColourTask and cfg.model.hidden == hidden and not cfg.variants
        assert json.loads((run / "variants" / name / "models" / "set_1" / "task.json").read_text())["history"]
    assert (run / "comparison" / "report.md").read_text() == (run / "report.md").read_text().replace(
        "](comparison/convergence.png)", "](convergence.png)")
    again = eval_variants(_config(tmp_path, law_clips), progress=False)  # re-predicts with the chosen weights
    assert {k: v["all"]["uar"]["value"] for k, v in again["variants"].items()} == uar


def test_unknown_kinds_name_the_known_ones_and_a_taken_kind_is_refused(tmp_path):
    raw = yaml.safe_load((ROOT / "configs/video/baseline_synthetic.yaml").read_text())
    raw["model"]["kind"] = "nope"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=r"bad.yaml: field 'model.kind': .*'nope'.*known: baseline, fer_pooling, "
                                          r"grace, mean_colour, ous"):
        load_video_config(path)
    with pytest.raises(ConfigError, match="already registered by .*MeanColourTask"):
        register_video_model("mean_colour")(type("Other", (MeanColourTask,), {}))
    assert video_model("grace").__name__ == "GraceTask"  # built-ins come from their entry points, unimported


def test_a_variant_of_another_kind_keeps_the_settings_it_shares():
    from vlm_salience.video.baseline import BaselineModelConfig
    from vlm_salience.video.variants import variant_configs

    cfg, _ = load_video_config(ROOT / "configs/video/grace_synthetic.yaml")
    runs = variant_configs(cfg)
    assert list(runs) == [v.name for v in cfg.variants] and cfg.reference == "grace"
    base = BaselineModelConfig.model_validate(runs["baseline"]["model"])
    g = cfg.model
    assert (base.encoder, base.context_tokens, base.temporal, base.temperature, base.vision) == \
        (g.encoder, g.context_tokens, g.temporal, g.temperature, g.vision)
    assert base.text == "frozen"  # GRACE's `text:` section is another setting than the baseline's text tower
    assert base.lr.model_dump() == g.lr.model_dump(exclude={"fusion"})
    models = {n: r["model"] for n, r in runs.items()}
    assert models["no_motion"]["motion"]["mode"] == "off" and models["no_text"]["text"]["source"] == "none"
    assert models["no_ot"]["ot"]["enabled"] is False and models["coarse_text"]["text"]["use"] == "coarse"
    assert models["grace"] == cfg.model.model_dump(mode="json")
    assert len({r["out"] for r in runs.values()}) == len(runs)
    with pytest.raises(ConfigError, match="compare_to 'nope' is not one of the variants"):
        load_video_config(ROOT / "configs/video/grace_synthetic.yaml", ["compare_to=nope"])
    with pytest.raises(ConfigError, match="variant 'x': field 'kind': .*'nope' is not a video model"):
        variant_configs(load_video_config(ROOT / "configs/video/grace_synthetic.yaml",
                                          ["variants=[{name: x, kind: nope}]", "compare_to=x"])[0])


def test_finished_variants_are_handed_to_train_video_with_resume(tmp_path, monkeypatch):
    import vlm_salience.video.train as video_train
    import vlm_salience.video.variants as variants

    calls: list[tuple[dict, bool]] = []

    def fake_train(config, overrides=(), *, resume=False, progress=False):
        calls.append((yaml.safe_load(Path(config).read_text()), resume))
        return {"folds": {}}

    monkeypatch.setattr(video_train, "train_video", fake_train)
    monkeypatch.setattr(variants, "compare_variants", lambda cfg, configs: {"compared": sorted(configs)})
    for name in ("grace", "no_text"):  # finished runs, as another `--quick` run would have left them
        (tmp_path / "variants" / name).mkdir(parents=True)
        (tmp_path / "variants" / name / "metrics.json").write_text("{}")
    doc = variants.train_variants(ROOT / "configs/video/grace_synthetic.yaml",
                                  [f"out={tmp_path}", "optim.max_steps=5",
                                   "variants=[{name: grace}, {name: no_text, set: {text.source: none}}]"],
                                  resume=True)
    assert [c[1] for c in calls] == [True, True]  # both go to train_video, which keeps a fold only if it matches
    assert [c[0]["out"] for c in calls] == [str(tmp_path / "variants" / n) for n in ("grace", "no_text")]
    assert calls[1][0]["model"]["text"]["source"] == "none" and calls[1][0]["optim"]["max_steps"] == 5
    assert "variants" not in calls[0][0] and doc == {"compared": ["grace", "no_text"]}
