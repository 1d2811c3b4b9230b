"""Train the `variants:` of any video YAML (a baseline, a model, its ablations) on one corpus and compare them:
`vlm-salience video train CONFIG.yaml` runs this when the YAML lists variants.

    variants:
      - {name: baseline, kind: baseline}            # another registered kind: the settings it shares are kept
      - {name: grace}                               # the YAML's own model
      - {name: no_text, set: {text.source: none}}   # dotted overrides of `model:`
    compare_to: grace                               # None: the first variant

Each variant is one ordinary run (`video/train.py:train_video`: cache, engine per fold, validation choice of
weights, test predictions, its own report) in OUT/variants/<name>/, from the config.yaml written there. The frame
cache is shared, so clips are prepared once. Then OUT/comparison/metrics.json and report.md (copied to OUT/) put
them side by side: UAR/WAR with bootstrap intervals, paired differences against `compare_to`
(`video/report.py:paired_comparison`, on all clips, on the ambiguous clips and on the clear ones), and validation
UAR against epoch per variant.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from pydantic import BaseModel, TypeAdapter, ValidationError

from vlm_salience.config import apply_overrides, read_yaml
from vlm_salience.errors import ConfigError
from vlm_salience.formatting import fmt_metric, json_safe
from vlm_salience.video.config import VideoTrainConfig, load_video_config


def has_variants(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> bool:
    """Whether a video YAML lists variants (the CLI then trains and compares them)."""
    raw = apply_overrides(read_yaml(Path(path)), list(overrides))
    return bool(raw.get("variants"))


def shared_section(section: dict[str, Any], model_cls: type[BaseModel]) -> dict[str, Any]:
    """The part of one kind's `model:` another kind's config class (`model_cls`) shares: its fields, nested
    sections filtered the same way (OUS's learning rates less its own parts). A field whose value does not fit
    the other kind (GRACE's `text:` section against the baseline's `text: frozen`) is another setting under the
    same name and keeps that kind's default."""
    out: dict[str, Any] = {}
    for key, value in section.items():
        field = model_cls.model_fields.get(key)
        if field is None or key == "kind":
            continue
        ann = field.annotation
        if isinstance(value, dict) and isinstance(ann, type) and issubclass(ann, BaseModel):
            out[key] = shared_section(value, ann)
            continue
        try:
            TypeAdapter(ann).validate_python(value)
        except ValidationError:
            continue
        out[key] = value
    return out


def variant_configs(cfg: VideoTrainConfig) -> dict[str, dict[str, Any]]:
    """name -> the full config dict of that variant's run (paths absolute; its own out folder)."""
    from vlm_salience.video.registry import model_config_class

    base = cfg.model_dump(mode="json")
    base.pop("variants", None)
    base.pop("compare_to", None)
    own = base["model"]["kind"]
    out: dict[str, dict[str, Any]] = {}
    for v in cfg.variants:
        d = copy.deepcopy(base)
        d["name"] = f"{cfg.name}/{v.name}"
        d["out"] = str(Path(cfg.out) / "variants" / v.name)
        kind = v.kind or own
        if kind != own:
            try:
                d["model"] = {**shared_section(d["model"], model_config_class(kind)), "kind": kind}
            except ConfigError as exc:
                raise ConfigError(f"variant '{v.name}': field 'kind': {exc}") from None
        d = apply_overrides(d, [f"model.{k}={json.dumps(val)}" for k, val in v.set.items()])
        out[v.name] = d
    if not out:  # no variants: the YAML's own model alone
        d = copy.deepcopy(base)
        d["name"], d["out"] = f"{cfg.name}/{own}", str(Path(cfg.out) / "variants" / own)
        out[own] = d
    return out


def _write_yaml(d: dict[str, Any]) -> Path:
    folder = Path(d["out"])
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(d, sort_keys=False))
    return path


def train_variants(config_path: str | Path, overrides: list[str] | tuple[str, ...] = (), *, resume: bool = False,
                   progress: bool = True, only: list[str] | None = None) -> dict[str, Any]:
    """Train every variant of a video YAML (or those named in `only`), then write the comparison; returns its
    metrics.json (or {"stopped": True, "variant": name} after SIGTERM: the rerun with resume continues)."""
    from vlm_salience.video.train import train_video

    cfg, _ = load_video_config(config_path, overrides)
    configs = variant_configs(cfg)
    unknown = sorted(set(only or []) - set(configs))
    if unknown:
        raise ConfigError(f"--only names variant(s) {unknown}; {config_path} has {sorted(configs)}")
    for name, d in configs.items():
        if only and name not in only:
            continue
        res = train_video(_write_yaml(d), resume=resume, progress=progress)
        if res.get("stopped"):
            return {"stopped": True, "variant": name}
    return compare_variants(cfg, configs)


def eval_variants(config_path: str | Path, overrides: list[str] | tuple[str, ...] = (), *,
                  progress: bool = True) -> dict[str, Any]:
    """Re-predict every trained variant's test folds with its chosen weights and rewrite the comparison."""
    from vlm_salience.video.train import eval_video

    cfg, _ = load_video_config(config_path, overrides)
    configs = variant_configs(cfg)
    for d in configs.values():
        path = Path(d["out"]) / "config.yaml"
        if (Path(d["out"]) / "models").is_dir():
            eval_video(path if path.is_file() else _write_yaml(d), progress=progress)
    return compare_variants(cfg, configs)


# -- comparison ----------------------------------------------------------------------------------------------------


def _history(run: Path) -> tuple[dict[str, list[dict[str, Any]]], dict[str, int]]:
    """(fold -> validation history [{step, uar, war}], fold -> training clips) from the folds' task.json."""
    hist, clips = {}, {}
    for meta_path in sorted((run / "models").glob("*/task.json")):
        meta = json.loads(meta_path.read_text())
        fold = meta_path.parent.name
        hist[fold] = [{"step": int(h["step"]), "uar": h.get("eval/uar"), "war": h.get("eval/war")}
                      for h in meta.get("history") or [] if "eval/uar" in h]
        clips[fold] = max(1, int(meta.get("train_clips") or 1))
    return hist, clips


def _scores(df: pd.DataFrame, classes: list[str], n_boot: int, seed: int) -> dict[str, Any]:
    from vlm_salience.metrics import score_classification

    idx = {c: k for k, c in enumerate(classes)}
    y, p = df["label"].map(idx).to_numpy(np.int64), df["predicted"].map(idx).to_numpy(np.int64)
    s = score_classification(y, p, n_classes=len(classes), n_boot=n_boot, seed=seed)
    return {"uar": s["uar"], "war": s["war"], "n": s["n"], "per_class_recall": s["per_class_recall"]["value"]}


def compare_variants(cfg: VideoTrainConfig, configs: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """OUT/comparison/metrics.json and report.md (and copies in OUT/) from the variants' predictions.csv."""
    from vlm_salience.atomic import staged_dir
    from vlm_salience.video.report import paired_comparison

    configs = configs or variant_configs(cfg)
    runs = {n: Path(d["out"]) for n, d in configs.items() if (Path(d["out"]) / "predictions.csv").is_file()}
    if not runs:
        raise ConfigError(f"no variant of {cfg.name} has predictions yet; train them first")
    preds = {n: pd.read_csv(p / "predictions.csv", dtype={"fold": str, "clip_id": str}) for n, p in runs.items()}
    first = json.loads((next(iter(runs.values())) / "metrics.json").read_text())
    classes = first["corpus"]["classes"]
    nb, seed = cfg.report.n_boot, cfg.report.seed
    ref = cfg.reference if cfg.reference in preds else None
    doc: dict[str, Any] = {"run": cfg.name, "corpus": first["corpus"], "compare_to": ref, "variants": {},
                           "paired": {}, "convergence": {}, "notes": []}
    bs = cfg.optim.batch_size * cfg.optim.grad_accum
    for name, df in preds.items():
        amb = df["ambiguous"].astype(bool)
        v = next((v for v in cfg.variants if v.name == name), None)
        entry = {"kind": configs[name]["model"]["kind"], "all": _scores(df, classes, nb, seed),
                 "set": v.set if v is not None else {}}
        if amb.any():
            entry["ambiguous"] = _scores(df[amb], classes, nb, seed)
            entry["clear"] = _scores(df[~amb], classes, nb, seed)
        doc["variants"][name] = entry
        hist, clips = _history(runs[name])
        doc["convergence"][name] = {fold: [{"epoch": round(x["step"] * bs / clips[fold], 3), **x} for x in h]
                                    for fold, h in hist.items()}
        if ref and name != ref:
            r = preds[ref]

            def paired(a: pd.DataFrame) -> dict[str, Any]:
                return paired_comparison(a, r, n_boot=nb, seed=seed, classes=classes)

            doc["paired"][name] = {"all": paired(df)}
            if amb.any():
                doc["paired"][name]["ambiguous"] = paired(df[amb])
                doc["paired"][name]["clear"] = paired(df[~amb])
    doc["polarity_targets"] = _polarity_source(runs)
    doc["notes"].append("each variant's weights are those of its best validation UAR, on a split carved from its "
                        "training fold (the test fold is never looked at before they are chosen)")
    doc = json_safe(doc)
    out = Path(cfg.out)
    with staged_dir(out / "comparison") as stage:
        fig = _plot_convergence(doc["convergence"], stage / "convergence.png")
        (stage / "metrics.json").write_text(json.dumps(doc, indent=2))
        (stage / "report.md").write_text(comparison_markdown(doc, ["convergence.png"] if fig else []))
    _link_top(out)
    return doc


def _link_top(out: Path) -> None:
    """OUT/metrics.json and OUT/report.md: the comparison's (atomic copies)."""
    from vlm_salience.atomic import write_text

    for f in ("metrics.json", "report.md"):
        text = (out / "comparison" / f).read_text()
        if f == "report.md":
            text = text.replace("](convergence.png)", "](comparison/convergence.png)")
        write_text(out / f, text)


def _polarity_source(runs: dict[str, Path]) -> str | None:
    """Where OUS-style polarity targets came from, where a variant's fingerprint records it."""
    for run in runs.values():
        for meta_path in sorted((run / "models").glob("*/task.json")):
            fp = json.loads(meta_path.read_text()).get("fingerprint", {})
            if "polarity targets" in fp:
                return fp["polarity targets"]
    return None


def _plot_convergence(conv: dict[str, dict[str, list[dict[str, float]]]], path: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not any(h for folds in conv.values() for h in folds.values()):
        return False
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, folds in conv.items():
        pts: dict[float, list[float]] = {}
        for h in folds.values():
            for x in h:
                if x.get("uar") is not None:
                    pts.setdefault(x["epoch"], []).append(x["uar"])
        if pts:
            xs = sorted(pts)
            ax.plot(xs, [float(np.mean(pts[x])) for x in xs], marker=".", label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation UAR (mean over folds)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _fmt_diff(p: dict[str, Any] | None, metric: str = "uar") -> str:
    if not p or metric not in p:
        return "n/a"
    e = p[metric]
    star = " **win**" if e["a_better"] else (" loss" if e["ci95"][1] < 0 else "")
    return f"{e['diff']:+.3f} [{e['ci95'][0]:+.3f}, {e['ci95'][1]:+.3f}]{star}"


def _epochs_to(conv_folds: dict[str, list[dict[str, float]]], frac: float = 0.9) -> float | None:
    """Mean over folds of the first epoch whose validation UAR reaches `frac` of that fold's best."""
    firsts = []
    for h in conv_folds.values():
        vals = [x for x in h if x.get("uar") is not None]
        if not vals:
            continue
        best = max(x["uar"] for x in vals)
        firsts.append(next(x["epoch"] for x in vals if x["uar"] >= frac * best))
    return float(np.mean(firsts)) if firsts else None


def comparison_markdown(doc: dict[str, Any], figures: list[str]) -> str:
    ref = doc["compare_to"]
    lines = [f"# {doc['run']}: variants against {ref or 'each other'} on {doc['corpus']['name']}", "",
             f"{doc['corpus']['n_test_clips']} test clips ({doc['corpus']['n_ambiguous']} of the corpus's clips "
             "have a face that is ambiguous on its own). UAR = mean per-class recall, WAR = accuracy, 95% bootstrap "
             "intervals over clips; paired differences are variant minus "
             f"{ref} on the same clips (**win**: the interval excludes zero in the variant's favour).", ""]
    if doc.get("polarity_targets"):
        lines += [f"Polarity targets: {doc['polarity_targets']} (corpus = its polarity column or its data YAML's "
                  "polarity_map; model.polarity_map = the config's class -> polarity mapping).", ""]
    lines += ["| variant | kind | UAR | WAR | UAR ambiguous | UAR clear | ΔUAR | ΔUAR ambiguous | ΔUAR clear | "
              "epochs to 90% of best val UAR |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, v in doc["variants"].items():
        p = doc["paired"].get(name, {})
        ep = _epochs_to(doc["convergence"].get(name, {}))
        lines.append(f"| {name} | {v.get('kind', '')} | {fmt_metric(v['all']['uar'])} | {fmt_metric(v['all']['war'])} "
                     f"| {fmt_metric(v.get('ambiguous', {}).get('uar'))} | {fmt_metric(v.get('clear', {}).get('uar'))} "
                     f"| {_fmt_diff(p.get('all')) if p else '—'} | {_fmt_diff(p.get('ambiguous')) if p else '—'} | "
                     f"{_fmt_diff(p.get('clear')) if p else '—'} | {'n/a' if ep is None else f'{ep:.2f}'} |")
    lines += ["", "ΔWAR (all clips): " + ", ".join(f"{n} {_fmt_diff(p.get('all'), 'war')}"
                                                 for n, p in doc["paired"].items()), ""]
    lines += ["Per-variant reports (per-class recall, confusion matrix, t-SNE where the model has features): "
              "variants/<name>/report.md.", ""]
    lines += [f"- {n}" for n in doc["notes"]]
    lines += ["", "## Validation UAR against epoch", ""] + [f"![{f}]({f})" for f in figures]
    return "\n".join(lines) + "\n"
