"""`vlm-salience demo`, step 7: the video models on the synthetic clip corpus.

One synthetic clip corpus (law on) under ROOT/clips and ONE frame cache under ROOT/clips_cache for the baseline,
OUS and GRACE: every demo run prepares with the baseline YAML's `data.prepare` settings (4 segments, 32 px), so
the clips are prepared once and the three models read the same frames. Each step is the ordinary workflow
(`train_video`, and `video/variants.py:train_variants` for the OUS and GRACE pairs) with dotted overrides; the
library never imports this module.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vlm_salience.video.train import train_video

DEMO_BASELINE = "configs/video/baseline_synthetic.yaml"
DEMO_OUS = "configs/video/ous_synthetic.yaml"
DEMO_GRACE = "configs/video/grace_synthetic.yaml"


def demo_clips(root: str | Path, *, progress: bool = True) -> Path:
    """ROOT/clips (configs/synth/clips.yaml, law on), written if missing; returns its generic data YAML."""
    from vlm_salience.resources import shipped

    root = Path(root)
    data = root / "clips" / "generic" / "data.yaml"
    if not data.is_file():
        from vlm_salience.config import load_config
        from vlm_salience.data.video.synth import ClipSynthConfig, write_clip_corpus

        write_clip_corpus(load_config(shipped("configs/synth/clips.yaml"), ClipSynthConfig), root / "clips",
                          progress=progress)
    return data


def demo_overrides(root: str | Path, *, folds: list[str] | None = None, steps: int | None = None,
                   progress: bool = True) -> list[str]:
    """The overrides every demo video run shares: the corpus, the one cache and its prepare settings (the
    baseline YAML's), the frames per clip, the folds, and the step count where one is given."""
    import json

    from vlm_salience.config import read_yaml
    from vlm_salience.resources import shipped

    root = Path(root)
    data = demo_clips(root, progress=progress)
    base = read_yaml(shipped(DEMO_BASELINE))["data"]
    out = [f"data.config={data}", f"data.cache={root / 'clips_cache'}",
           f"data.prepare={json.dumps(base['prepare'])}", f"data.n_segments={base['n_segments']}"]
    if folds:
        out.append(f"data.folds={json.dumps(list(folds))}")
    if steps is not None:
        out.append(f"optim.max_steps={int(steps)}")
    return out


def fresh_if_settings_changed(out: Path, overrides: list[str]) -> None:
    """A demo run into a folder that holds the same step at other settings (`demo --quick`, then the full demo)
    starts that step afresh: resuming would be refused, since a checkpoint with other optimiser settings is never
    continued. Only the step's own folder, which the demo itself wrote, is cleared; the same settings resume."""
    import json
    import shutil

    from vlm_salience.atomic import write_text

    settings = out / "demo_overrides.json"
    if out.is_dir() and (not settings.is_file() or json.loads(settings.read_text()) != overrides):
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    write_text(settings, json.dumps(overrides))


def demo_step(root: str | Path, *, folds: list[str] | None = None, steps: int | None = None,
              progress: bool = True) -> dict[str, Any]:
    """The face-only baseline of configs/video/baseline_synthetic.yaml on the demo clips (resumable): its
    headline figures. `steps` overrides its 600 training steps (the demo's --quick)."""
    from vlm_salience.resources import shipped

    root = Path(root)
    overrides = [*demo_overrides(root, folds=folds, steps=steps, progress=progress),
                 f"model.encoder.path={root / 'models' / 'tiny_clip'}", f"out={root / 'video_baseline_synthetic'}"]
    fresh_if_settings_changed(root / "video_baseline_synthetic", overrides)
    res = train_video(shipped(DEMO_BASELINE), overrides, resume=True, progress=progress)
    if res.get("report") is None:  # SIGTERM: checkpointed, the rerun resumes
        return {"out": str(root / "video_baseline_synthetic"), "stopped": True}
    m = res["report"].get("methods", {}).get("baseline", {})
    return {"out": str(root / "video_baseline_synthetic"), "uar": m.get("pooled", {}).get("uar"),
            "war": m.get("pooled", {}).get("war"), "fold_mean": m.get("summary", {}).get("uar"),
            "ambiguous": m.get("ambiguous"), "unambiguous": m.get("unambiguous")}


def demo_ous_step(root: str | Path, *, folds: list[str] | None = None, steps: int | None = None,
                  progress: bool = True) -> dict[str, Any]:
    """OUS against its face-only baseline (the README's quick pair of configs/video/ous_synthetic.yaml: the same
    frozen tiny CLIP, steps and seed) on the demo clips; returns the comparison's metrics.json (resumable)."""
    from vlm_salience.resources import shipped
    from vlm_salience.video.variants import train_variants

    root = Path(root)
    overrides = [*demo_overrides(root, folds=folds, steps=steps, progress=progress),
                 f"model.encoder.path={root / 'models' / 'tiny_clip'}", f"out={root / 'video_ous_synthetic'}",
                 "variants=[{name: baseline, kind: baseline}, {name: ous}]"]
    fresh_if_settings_changed(root / "video_ous_synthetic", overrides)
    doc = train_variants(shipped(DEMO_OUS), overrides, resume=True, progress=progress)
    return {**doc, "out": str(root / "video_ous_synthetic" / "comparison")}


def demo_grace_step(root: str | Path, *, folds: list[str] | None = None, steps: int | None = None,
                    progress: bool = True) -> dict[str, Any]:
    """GRACE against its no-text variant (`text.source: none`: the same model on the face frames alone) on the demo
    clips, as two `variants:` of configs/video/grace_synthetic.yaml; returns each variant's pooled, per-fold and
    ambiguous-clip scores (its own metrics.json), the paired GRACE - no_text comparison and the comparison's
    folder (metrics.json, report.md)."""
    import json

    from vlm_salience.resources import shipped
    from vlm_salience.video.report import paired_comparison
    from vlm_salience.video.variants import train_variants

    root = Path(root)
    out = root / "video_grace_synthetic"
    overrides = [*demo_overrides(root, folds=folds, steps=steps, progress=progress),
                 f"model.encoder.path={root / 'models' / 'tiny_clip_grace'}", f"out={out}",
                 "variants=[{name: grace}, {name: no_text, set: {text.source: none}}]", "compare_to=grace"]
    fresh_if_settings_changed(out, overrides)
    doc = train_variants(shipped(DEMO_GRACE), overrides, resume=True, progress=progress)
    if doc.get("stopped"):
        return {**doc, "out": str(out / "comparison")}
    methods = {}
    for name in doc["variants"]:
        m = next(iter(json.loads((out / "variants" / name / "metrics.json").read_text())["methods"].values()))
        methods[name] = {"pooled": m["pooled"], "summary": m["summary"], "ambiguous": m.get("ambiguous")}
    return {"methods": methods, "paired": doc["paired"],
            "grace_vs_no_text": paired_comparison(out / "variants" / "grace", out / "variants" / "no_text"),
            "out": str(out / "comparison")}
