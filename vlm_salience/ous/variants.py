"""Train a list of variants (the face-only baseline, OUS, its ablations, the salience gate) on one corpus and
compare them: `train_variants(CONFIG.yaml)`.

Each variant is one run of the foundation's workflow (`video/train.py:train_video`: cache, engine per fold,
validation choice of weights, test predictions, its own report) in OUT/variants/<name>/, from a YAML written there
(the OUS config with the variant's overrides; the baseline's model is the OUS config's shared fields). The frame
cache is shared, so clips are prepared once. Then OUT/metrics.json and OUT/report.md put them side by side: UAR/WAR
with bootstrap intervals, paired differences against `compare_to` (on all clips, on the ambiguous clips and on the
clear ones), and validation UAR against epoch per variant (the paper's faster-convergence claim, tested).
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from vlm_salience.config import apply_overrides, read_yaml, validate
from vlm_salience.errors import ConfigError
from vlm_salience.ous.config import OusTrainConfig, baseline_model_section

TASK = "vlm_salience.ous.task:OusTask"


def register() -> None:
    """Make `model.kind: ous` known to the video workflow's registry (idempotent)."""
    from vlm_salience.video.config import VIDEO_MODELS

    VIDEO_MODELS.setdefault("ous", TASK)


register()


def load_ous_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> OusTrainConfig:
    path = Path(path)
    raw = apply_overrides(read_yaml(path), list(overrides))
    return validate(raw, OusTrainConfig, source=path, base_dir=path.resolve().parent)


def has_variants(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> bool:
    """Whether a video YAML is an OUS config listing variants (the CLI then runs `train_variants`)."""
    raw = apply_overrides(read_yaml(Path(path)), list(overrides))
    model = raw.get("model") if isinstance(raw.get("model"), dict) else {}
    return model.get("kind") == "ous" and bool(raw.get("variants"))


def variant_configs(cfg: OusTrainConfig) -> dict[str, dict[str, Any]]:
    """name -> the full config dict of that variant's run (paths absolute; its own out folder)."""
    base = cfg.model_dump(mode="json")
    base.pop("variants", None)
    base.pop("compare_to", None)
    out: dict[str, dict[str, Any]] = {}
    variants = cfg.variants or [type("V", (), {"name": "ous", "kind": "ous", "set": {}})()]
    for v in variants:
        d = copy.deepcopy(base)
        d["name"] = f"{cfg.name}/{v.name}"
        d["out"] = str(Path(cfg.out) / "variants" / v.name)
        if v.kind == "baseline":
            d["model"] = baseline_model_section(d["model"])
        d = apply_overrides(d, [f"model.{k}={json.dumps(val)}" for k, val in v.set.items()])
        out[v.name] = d
    return out


def _write_yaml(d: dict[str, Any]) -> Path:
    folder = Path(d["out"])
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(d, sort_keys=False))
    return path


def train_variants(config_path: str | Path, overrides: list[str] | tuple[str, ...] = (), *, resume: bool = False,
                   progress: bool = True, only: list[str] | None = None) -> dict[str, Any]:
    """Train every variant of an OUS config (or those named in `only`), then write the comparison."""
    from vlm_salience.video.train import train_video

    cfg = load_ous_config(config_path, overrides)
    configs = variant_configs(cfg)
    unknown = sorted(set(only or []) - set(configs))
    if unknown:
        raise ConfigError(f"--only names variant(s) {unknown}; the config has {sorted(configs)}")
    runs = {}
    for name, d in configs.items():
        if only and name not in only:
            continue
        path = _write_yaml(d)
        res = train_video(path, resume=resume, progress=progress)
        if res.get("stopped"):
            return {"stopped": True, "variant": name}
        runs[name] = str(path.parent)
    return compare_variants(cfg, configs)


def eval_variants(config_path: str | Path, overrides: list[str] | tuple[str, ...] = (), *,
                  progress: bool = True) -> dict[str, Any]:
    """Re-predict every trained variant's test folds with its chosen weights and rewrite the comparison."""
    from vlm_salience.video.train import eval_video

    cfg = load_ous_config(config_path, overrides)
    configs = variant_configs(cfg)
    for d in configs.values():
        path = Path(d["out"]) / "config.yaml"
        if (Path(d["out"]) / "models").is_dir():
            eval_video(_write_yaml(d) if not path.is_file() else path, progress=progress)
    return compare_variants(cfg, configs)


# -- comparison ----------------------------------------------------------------------------------------------------


def _history(run: Path) -> dict[str, list[dict[str, float]]]:
    """fold -> validation history [{epoch, uar, war}] from the fold's task.json."""
    out = {}
    for meta_path in sorted((run / "models").glob("*/task.json")):
        meta = json.loads(meta_path.read_text())
        hist = meta.get("history") or []
        n = max(1, int(meta.get("train_clips") or 1))
        out[meta_path.parent.name] = [{"step": int(h["step"]), "uar": h.get("eval/uar"), "war": h.get("eval/war")}
                                      for h in hist if "eval/uar" in h]
        out[meta_path.parent.name + ":train_clips"] = n  # type: ignore[assignment]
    return out


def _scores(df: pd.DataFrame, classes: list[str], n_boot: int, seed: int) -> dict[str, Any]:
    from vlm_salience.metrics import score_classification

    idx = {c: k for k, c in enumerate(classes)}
    y, p = df["label"].map(idx).to_numpy(np.int64), df["predicted"].map(idx).to_numpy(np.int64)
    s = score_classification(y, p, n_classes=len(classes), n_boot=n_boot, seed=seed)
    return {"uar": s["uar"], "war": s["war"], "n": s["n"], "per_class_recall": s["per_class_recall"]["value"]}


def _paired(a: pd.DataFrame, b: pd.DataFrame, classes: list[str], n_boot: int, seed: int) -> dict[str, Any]:
    from vlm_salience.metrics import paired_bootstrap_classification

    both = a.merge(b, on=["fold", "clip_id"], suffixes=("_a", "_b"))
    if both.empty:
        return {}
    idx = {c: k for k, c in enumerate(classes)}
    r = paired_bootstrap_classification(both["predicted_a"].map(idx).to_numpy(np.int64),
                                        both["predicted_b"].map(idx).to_numpy(np.int64),
                                        both["label_a"].map(idx).to_numpy(np.int64), n_classes=len(classes),
                                        n_boot=n_boot, seed=seed)
    return {**r, "n": int(len(both))}


def compare_variants(cfg: OusTrainConfig, configs: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """OUT/metrics.json and OUT/report.md from the variants' predictions.csv (recomputable from them)."""
    from vlm_salience.atomic import staged_dir

    configs = configs or variant_configs(cfg)
    runs = {n: Path(d["out"]) for n, d in configs.items() if (Path(d["out"]) / "predictions.csv").is_file()}
    if not runs:
        raise ConfigError(f"no variant of {cfg.name} has predictions yet; train them first")
    preds = {n: pd.read_csv(p / "predictions.csv", dtype={"fold": str, "clip_id": str}) for n, p in runs.items()}
    first = json.loads((next(iter(runs.values())) / "metrics.json").read_text())
    classes = first["corpus"]["classes"]
    nb, seed = cfg.report.n_boot, cfg.report.seed
    ref = cfg.compare_to if cfg.compare_to in preds else None
    doc: dict[str, Any] = {"run": cfg.name, "corpus": first["corpus"], "compare_to": ref, "variants": {},
                           "paired": {}, "convergence": {}, "notes": []}
    for name, df in preds.items():
        amb = df["ambiguous"].astype(bool)
        entry = {"all": _scores(df, classes, nb, seed),
                 "set": next((v.set for v in cfg.variants if v.name == name), {})}
        if amb.any():
            entry["ambiguous"] = _scores(df[amb], classes, nb, seed)
            entry["clear"] = _scores(df[~amb], classes, nb, seed)
        doc["variants"][name] = entry
        hist = _history(runs[name])
        bs = cfg.optim.batch_size * cfg.optim.grad_accum
        conv = {}
        for fold, h in hist.items():
            if fold.endswith(":train_clips"):
                continue
            n = hist[fold + ":train_clips"]
            conv[fold] = [{"epoch": round(x["step"] * bs / n, 3), **x} for x in h]  # type: ignore[dict-item]
        doc["convergence"][name] = conv
        if ref and name != ref:
            r = preds[ref]
            doc["paired"][name] = {"all": _paired(df, r, classes, nb, seed)}
            if amb.any():
                doc["paired"][name]["ambiguous"] = _paired(df[amb], r, classes, nb, seed)
                doc["paired"][name]["clear"] = _paired(df[~amb], r, classes, nb, seed)
    pol = _polarity_source(runs)
    doc["polarity_targets"] = pol
    doc["notes"].append("each variant's weights are the best validation UAR's on a split carved from its training "
                        "fold (the authors' script chose by test loss; we never look at the test fold)")
    out = Path(cfg.out)
    with staged_dir(out / "comparison") as stage:
        fig = _plot_convergence(doc["convergence"], stage / "convergence.png")
        (stage / "metrics.json").write_text(json.dumps(_clean(doc), indent=2))
        (stage / "report.md").write_text(comparison_markdown(doc, ["convergence.png"] if fig else []))
    _link_top(out)
    return _clean(doc)


def _link_top(out: Path) -> None:
    """OUT/metrics.json and OUT/report.md: the comparison's (atomic copies)."""
    from vlm_salience.atomic import write_text

    for f in ("metrics.json", "report.md"):
        text = (out / "comparison" / f).read_text()
        if f == "report.md":
            text = text.replace("](convergence.png)", "](comparison/convergence.png)")
        write_text(out / f, text)


def _polarity_source(runs: dict[str, Path]) -> str | None:
    for run in runs.values():
        for meta_path in sorted((run / "models").glob("*/task.json")):
            fp = json.loads(meta_path.read_text()).get("fingerprint", {})
            if "polarity targets" in fp:
                return fp["polarity targets"]
    return None


def _clean(obj: Any) -> Any:
    from vlm_salience.report import _clean as clean

    return clean(obj)


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


def _fmt(v: dict[str, Any] | None) -> str:
    if not v or v.get("value") is None or not math.isfinite(v["value"]):
        return "n/a"
    lo, hi = v["ci95"]
    return f"{v['value']:.3f} [{lo:.3f}, {hi:.3f}]"


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
    lines = [f"# {doc['run']}: OUS variants against {ref or 'each other'} on {doc['corpus']['name']}", "",
             f"{doc['corpus']['n_test_clips']} test clips ({doc['corpus']['n_ambiguous']} of the corpus's clips "
             "have a face that is ambiguous on its own). UAR = mean per-class recall, WAR = accuracy, 95% bootstrap "
             "intervals over clips; paired differences are variant minus "
             f"{ref} on the same clips (**win**: the interval excludes zero in the variant's favour).", "",
             f"Polarity targets: {doc.get('polarity_targets') or 'none'} (corpus = its polarity column or its data "
             "YAML's polarity_map; model.polarity_map = the OUS config's class -> polarity mapping).", "",
             "| variant | UAR | WAR | UAR ambiguous | UAR clear | ΔUAR | ΔUAR ambiguous | ΔUAR clear | "
             "epochs to 90% of best val UAR |", "|---|---|---|---|---|---|---|---|---|"]
    for name, v in doc["variants"].items():
        p = doc["paired"].get(name, {})
        ep = _epochs_to(doc["convergence"].get(name, {}))
        lines.append(f"| {name} | {_fmt(v['all']['uar'])} | {_fmt(v['all']['war'])} | "
                     f"{_fmt(v.get('ambiguous', {}).get('uar'))} | {_fmt(v.get('clear', {}).get('uar'))} | "
                     f"{_fmt_diff(p.get('all')) if p else '—'} | {_fmt_diff(p.get('ambiguous')) if p else '—'} | "
                     f"{_fmt_diff(p.get('clear')) if p else '—'} | {'n/a' if ep is None else f'{ep:.2f}'} |")
    lines += ["", "ΔWAR (all clips): " + ", ".join(f"{n} {_fmt_diff(p.get('all'), 'war')}"
                                                 for n, p in doc["paired"].items()), ""]
    lines += ["Per-variant reports (per-class recall, confusion matrix, t-SNE of the fused features): "
              "variants/<name>/report.md.", ""]
    lines += [f"- {n}" for n in doc["notes"]]
    lines += ["", "## Validation UAR against epoch", ""] + [f"![{f}]({f})" for f in figures]
    return "\n".join(lines) + "\n"
