"""GRACE's ablations side by side: each variant is the same YAML with dotted overrides, trained through the shared
video workflow (`video/train.py:train_video`), then compared on the same test clips with paired bootstrap
intervals (`video/report.py:paired_comparison`), the face-only baseline beside them.

Variants (`DEFAULT_VARIANTS`): full GRACE, coarse text only, no motion weighting, no OT (mean-pooled tokens), no
text. The baseline's YAML is the GRACE YAML with GRACE's own model keys dropped and `kind: baseline`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

DEFAULT_VARIANTS: dict[str, list[str]] = {
    "grace": [],
    "coarse_text": ["model.text.use=coarse"],
    "no_motion": ["model.motion.mode=off"],
    "no_ot": ["model.ot.enabled=false"],
    "no_text": ["model.text.source=none"],
}
GRACE_ONLY = ("text", "motion", "ot", "contrastive_weight", "contrastive_temperature", "keep_plans", "text_tower")


def baseline_yaml(grace_yaml: str | Path, out: str | Path, overrides: list[str] = ()) -> Path:
    """The face-only baseline's YAML for the same data, encoder, engine settings and seed."""
    from vlm_salience.config import apply_overrides, read_yaml

    src = Path(grace_yaml).resolve()
    raw = apply_overrides(read_yaml(src), list(overrides))
    model = {k: v for k, v in raw["model"].items() if k not in GRACE_ONLY}
    model["kind"] = "baseline"
    if "lr" in model:
        model["lr"] = {k: v for k, v in model["lr"].items() if k != "fusion"}
    raw["model"] = model

    def resolve(section: dict, key: str) -> None:  # relative paths were relative to the GRACE YAML's folder
        v = section.get(key)
        if isinstance(v, str) and not Path(v).is_absolute():
            section[key] = str((src.parent / v).resolve())

    for k in ("config", "cache", "prepare"):
        resolve(raw["data"], k)
    resolve(model.get("encoder", {}), "build")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    raw["out"] = str(Path(out) / "baseline")
    path = out / "baseline.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def run_ablations(config: str | Path, out: str | Path, *, variants: dict[str, list[str]] | None = None,
                  overrides: list[str] = (), baseline: bool = True, reference: str = "grace",
                  n_boot: int = 1000, progress: bool = False) -> dict[str, Any]:
    """Train every variant (and the baseline) into OUT/<name>/, compare each with the reference variant and with
    the baseline on the clips both predicted; write OUT/ablations.json and ablations.md."""
    from vlm_salience.grace import register
    from vlm_salience.video.report import paired_comparison
    from vlm_salience.video.train import train_video

    register()
    out = Path(out)
    variants = dict(DEFAULT_VARIANTS if variants is None else variants)
    runs: dict[str, Path] = {}
    for name, extra in variants.items():
        run = out / name
        # resume, never "skip if metrics.json exists": a finished fold is kept only if its fingerprint matches
        # these settings (`train_video`), so a run left by other settings (e.g. `--quick`) is not reused
        train_video(config, [*overrides, *extra, f"out={run}"], resume=True, progress=progress)
        runs[name] = run
    if baseline:
        run = out / "baseline"
        train_video(baseline_yaml(config, out, list(overrides)), resume=True, progress=progress)
        runs["baseline"] = run
    doc: dict[str, Any] = {"config": str(config), "overrides": list(overrides), "variants": variants,
                           "methods": {}, "paired": {}}
    for name, run in runs.items():
        m = json.loads((run / "metrics.json").read_text())
        scores = next(iter(m["methods"].values()))
        doc["methods"][name] = {"pooled": scores["pooled"], "summary": scores["summary"]}
    for name in runs:
        for other in (reference, "baseline"):
            if other in runs and other != name:
                doc["paired"][f"{name} - {other}"] = paired_comparison(runs[name], runs[other], n_boot=n_boot)
    (out / "ablations.json").write_text(json.dumps(doc, indent=2, default=float))
    (out / "ablations.md").write_text(ablation_markdown(doc))
    return doc


def _ci(v: dict) -> str:
    lo, hi = v.get("ci95", [None, None])
    return f"{v['value']:.3f} [{lo:.3f}, {hi:.3f}]" if lo is not None else f"{v['value']:.3f}"


def ablation_markdown(doc: dict[str, Any]) -> str:
    lines = ["# GRACE ablations", "", f"Config: `{doc['config']}` {' '.join(doc['overrides'])}", "",
             "| method | UAR (pooled, 95% CI) | WAR (pooled, 95% CI) |", "|---|---|---|"]
    for name, m in doc["methods"].items():
        lines.append(f"| {name} | {_ci(m['pooled']['uar'])} | {_ci(m['pooled']['war'])} |")
    lines += ["", "Paired bootstrap over the same test clips (a - b; 95% interval; p):", "",
              "| comparison | dUAR | dWAR |", "|---|---|---|"]
    for k, p in doc["paired"].items():
        cell = [f"{p[m]['diff']:+.3f} [{p[m]['ci95'][0]:+.3f}, {p[m]['ci95'][1]:+.3f}] p={p[m]['p']:.3f}"
                for m in ("uar", "war")]
        lines.append(f"| {k} | {cell[0]} | {cell[1]} |")
    return "\n".join(lines) + "\n"
