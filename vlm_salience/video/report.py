"""The report of a video run: metrics.json, predictions.csv, report.md, confusion-matrix and t-SNE plots.

UAR and WAR with 95% bootstrap intervals over clips, per fold, as the fold mean ± sd (how DFEW/MAFW results are
reported) and pooled over every test clip; per-class recall; the scores on the ambiguous clips of a corpus that
marks them (the synthetic clips whose face alone is ambiguous between two classes: a face-only model should sit
near the pair's chance level there). Everything is staged and moved into the run folder only when complete.
`paired_comparison` compares two runs' predictions of the same clips (e.g. OUS against this baseline).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from vlm_salience.atomic import staged_dir
from vlm_salience.metrics import fold_summary, paired_bootstrap_classification, score_classification
from vlm_salience.formatting import fmt_metric as _fmt  # one number format for every report

TRUE = {"1", "true", "yes", "y", "ambiguous"}


def _clean(obj: Any) -> Any:
    from vlm_salience.formatting import json_safe as clean

    return clean(obj)


def ambiguity(corpus) -> dict[str, list[str]]:
    """clip id -> the pair of classes its face is ambiguous between ([] where the pair is not named), for the
    clips a corpus marks ambiguous (`VideoClip.meta["ambiguous"]`, with the pair in `meta["pair"]` as
    "classA|classB" where known)."""
    out: dict[str, list[str]] = {}
    for c in corpus.clips:
        flag = str(c.meta.get("ambiguous", "")).strip().lower()
        if flag in TRUE:
            pair = [p for p in str(c.meta.get("pair", "")).replace(",", "|").split("|") if p.strip()]
            out[c.clip_id] = [p.strip() for p in pair]
    return out




def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def predictions_frame(per_fold: dict[str, dict[str, Any]], classes: list[str],
                      ambiguous: dict[str, list[str]]) -> pd.DataFrame:
    rows = []
    for fold, entry in per_fold.items():
        p = entry["test"]
        for i, cid in enumerate(p.clip_ids):
            row = {"fold": fold, "clip_id": cid, "label": classes[p.labels[i]],
                   "predicted": classes[p.predicted[i]], "ambiguous": cid in ambiguous}
            row.update({f"p_{c}": float(p.probs[i, k]) for k, c in enumerate(classes)})
            rows.append(row)
    return pd.DataFrame(rows)


def scores_from_predictions(df: pd.DataFrame, classes: list[str], *, n_boot: int, seed: int,
                            ambiguous: dict[str, list[str]] | None = None) -> dict[str, Any]:
    """UAR/WAR per fold, fold mean ± sd, pooled, and on the ambiguous clips, from a predictions table (what
    metrics.json holds; recomputable from predictions.csv)."""
    index = {c: k for k, c in enumerate(classes)}
    prob_cols = [f"p_{c}" for c in classes]
    y = df["label"].map(index).to_numpy(np.int64)
    yhat = df[prob_cols].to_numpy().argmax(axis=1)
    folds: dict[str, Any] = {}
    for fold in dict.fromkeys(df["fold"]):
        m = (df["fold"] == fold).to_numpy()
        folds[str(fold)] = score_classification(y[m], yhat[m], n_classes=len(classes), n_boot=n_boot, seed=seed)
    out: dict[str, Any] = {"folds": folds, "summary": fold_summary(list(folds.values())),
                           "pooled": score_classification(y, yhat, n_classes=len(classes), n_boot=n_boot, seed=seed)}
    amb = df["ambiguous"].astype(bool).to_numpy() if "ambiguous" in df else np.zeros(len(df), bool)
    if amb.any():
        pairs = [ambiguous.get(c, []) for c in df.loc[amb, "clip_id"]] if ambiguous else []
        sizes = [len(p) for p in pairs if p]
        chance = 1.0 / float(np.mean(sizes)) if sizes else 0.5
        s = score_classification(y[amb], yhat[amb], n_classes=len(classes), n_boot=n_boot, seed=seed)
        in_pair = None
        if sizes:
            names = df.loc[amb, "predicted"].to_numpy() if "predicted" in df else np.array(classes)[yhat[amb]]
            in_pair = float(np.mean([n in p for n, p in zip(names, pairs) if p]))
        out["ambiguous"] = {"uar": s["uar"], "war": s["war"], "n": int(amb.sum()), "pair_chance": chance,
                            "predicted_within_pair": in_pair, "confusion": s["confusion"]}
        rest = ~amb
        if rest.any():
            r = score_classification(y[rest], yhat[rest], n_classes=len(classes), n_boot=n_boot, seed=seed)
            out["unambiguous"] = {"uar": r["uar"], "war": r["war"], "n": int(rest.sum())}
    return out


def plot_confusion(confusion: list[list[int]], classes: list[str], path: Path, title: str) -> bool:
    cm = np.asarray(confusion, float)
    if cm.size == 0:
        return False
    plt = _plt()
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1.0 + 0.7 * len(classes), 0.8 + 0.65 * len(classes)))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, f"{norm[i, j]:.2f}\n({int(cm[i, j])})", ha="center", va="center", fontsize=7,
                    color="white" if norm[i, j] > 0.6 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def plot_tsne(features: np.ndarray, labels: np.ndarray, ambiguous: np.ndarray, classes: list[str], path: Path,
              *, max_clips: int, seed: int, fold: str | None = None) -> bool:
    """t-SNE of clip features coloured by true class; clips with an ambiguous face drawn as crosses."""
    n = len(features)
    if n < 5:
        return False
    from sklearn.manifold import TSNE

    rng = np.random.default_rng(seed)
    keep = np.sort(rng.choice(n, size=min(n, max_clips), replace=False))
    x, y, a = features[keep], labels[keep], ambiguous[keep]
    method = "exact" if len(x) <= 600 else "barnes_hut"  # exact is faster (and threads no worse) when small
    emb = TSNE(n_components=2, perplexity=float(min(30, max(2, (len(x) - 1) // 3))), init="pca",
               method=method, random_state=seed).fit_transform(x)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 5.2))
    cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
    for k, c in enumerate(classes):
        m = y == k
        ax.scatter(emb[m & ~a, 0], emb[m & ~a, 1], s=14, color=cmap(k), label=c)
        if (m & a).any():
            ax.scatter(emb[m & a, 0], emb[m & a, 1], s=26, color=cmap(k), marker="x")
    where = f", test clips of fold {fold}" if fold else ""
    ax.set_title(f"t-SNE of clip features{where}" + (" (x: ambiguous face)" if a.any() else ""))
    ax.legend(fontsize=7, markerscale=1.2, loc="best")
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def report_markdown(doc: dict[str, Any], figures: list[str]) -> str:
    method, m = next(iter(doc["methods"].items()))
    classes = doc["corpus"]["classes"]
    lines = [f"# {doc['run']}: {method} on {doc['corpus']['name']}", "",
             f"{doc['corpus']['n_test_clips']} test clips over {len(m['folds'])} fold(s), {len(classes)} classes. "
             "UAR = mean per-class recall, WAR = accuracy; 95% bootstrap intervals over clips.", "",
             "| fold | UAR | WAR | clips |", "|---|---|---|---|"]
    for fold, s in m["folds"].items():
        lines.append(f"| {fold} | {_fmt(s['uar'])} | {_fmt(s['war'])} | {s['n']} |")
    sm = m["summary"]
    if len(m["folds"]) > 1:
        sd = {k: (f"{sm[k]['sd']:.3f}" if sm[k]["sd"] is not None and np.isfinite(sm[k]["sd"]) else "n/a")
              for k in ("uar", "war")}
        lines.append(f"| mean ± sd | {sm['uar']['mean']:.3f} ± {sd['uar']} | {sm['war']['mean']:.3f} ± {sd['war']} | |")
    lines.append(f"| pooled | {_fmt(m['pooled']['uar'])} | {_fmt(m['pooled']['war'])} | {m['pooled']['n']} |")
    rec = m["pooled"]["per_class_recall"]
    lines += ["", "## Per-class recall (pooled)", "", "| class | recall | clips |", "|---|---|---|"]
    for k, c in enumerate(classes):
        v = {"value": rec["value"][k], "ci95": rec["ci95"][k]}
        lines.append(f"| {c} | {_fmt(v)} | {rec['support'][k]} |")
    if "ambiguous" in m:
        a = m["ambiguous"]
        lines += ["", "## Clips whose face is ambiguous", "",
                  f"{a['n']} test clips whose face alone is ambiguous between two classes (the scene decides). "
                  f"A face-only model should sit near the pair's chance level ({a['pair_chance']:.2f}) here.", "",
                  f"- WAR on ambiguous clips: {_fmt(a['war'])} (pair chance {a['pair_chance']:.2f})",
                  f"- UAR on ambiguous clips: {_fmt(a['uar'])}"]
        if a.get("predicted_within_pair") is not None:
            lines.append(f"- predicted one of the pair: {a['predicted_within_pair']:.2f}")
        if "unambiguous" in m:
            lines.append(f"- on the other clips: UAR {_fmt(m['unambiguous']['uar'])}, "
                         f"WAR {_fmt(m['unambiguous']['war'])} ({m['unambiguous']['n']} clips)")
    lines += ["", "## Figures", ""] + [f"![{f}]({f})" for f in figures]
    if doc.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in doc["notes"]]
    lines += ["", "Files: metrics.json (every figure above), predictions.csv (per clip: fold, label, prediction, "
              "class probabilities; metrics.json is recomputable from it), models/<fold>/ (trained weights)."]
    return "\n".join(lines) + "\n"


def dropped_notes(corpus, prepared: dict | None, shown: int = 5) -> list[str]:
    """What was left out of the run, for report.md and the console as well as metrics.json: rows of the data
    skipped under drop_invalid, and clips prepare could not read (never trained on or scored)."""
    notes = []
    lines = corpus.dropped.lines() if getattr(corpus, "dropped", None) is not None else []
    if lines:
        more = f"; and {len(lines) - shown} more (metrics.json)" if len(lines) > shown else ""
        notes.append(f"data.drop_invalid: skipped {corpus.dropped.total} row(s) of the data: "
                     + "; ".join(lines[:shown]) + more)
    bad = (prepared or {}).get("invalid") or []
    if bad:
        more = f"; and {len(bad) - shown} more (metrics.json, prepare.invalid)" if len(bad) > shown else ""
        notes.append(f"prepare skipped {len(bad)} clip(s) it could not read (neither trained on nor scored): "
                     + "; ".join(str(b.get("error") or b.get("clip_id")) for b in bad[:shown]) + more)
    return notes


def write_video_report(cfg, corpus, per_fold: dict[str, dict[str, Any]], *, prepared: dict | None = None,
                       training: dict | None = None) -> dict[str, Any]:
    """Score the test predictions of every fold and write the run's report files into cfg.out."""
    from vlm_salience import __version__

    classes = list(corpus.classes)
    amb = ambiguity(corpus)
    df = predictions_frame(per_fold, classes, amb)
    method = cfg.model.kind
    scores = scores_from_predictions(df, classes, n_boot=cfg.report.n_boot, seed=cfg.report.seed, ambiguous=amb)
    notes = []
    selection = {}
    for fold in per_fold:
        meta_path = Path(cfg.out) / "models" / fold / "task.json"
        if meta_path.is_file():
            meta = json.loads(meta_path.read_text())
            selection[fold] = {**meta.get("selection", {}), "train_clips": meta.get("train_clips"),
                               "validation_clips": meta.get("validation_clips")}
        if per_fold[fold].get("missing_from_cache"):
            notes.append(f"fold {fold}: {per_fold[fold]['missing_from_cache']} test clip(s) are not in the cache "
                         "(dropped as invalid by prepare) and are not scored")
    notes += dropped_notes(corpus, prepared)
    if selection:
        chosen = {s.get("selected") for s in selection.values()}
        notes.append(f"weights per fold: {', '.join(sorted(str(c) for c in chosen))} (chosen on a validation "
                     "split carved from the training fold; the test fold is never used for the choice)")
    if prepared and prepared.get("detection_frames"):
        notes.append(f"face detection missed {prepared['missed_detection_frames']} of "
                     f"{prepared['detection_frames']} frames ({prepared['clips_with_missed']} clips); those frames "
                     "reuse a neighbour's box (or the centre)")
    doc = {"package_version": __version__, "run": cfg.name,
           "corpus": {"name": corpus.name, "classes": classes, "fingerprint": corpus.fingerprint,
                      "n_clips": len(corpus), "n_test_clips": int(len(df)), "n_ambiguous": len(amb)},
           "config": cfg.model_dump(mode="json"),
           "methods": {method: {**scores, "selection": selection}},
           "prepare": prepared, "training": _training_summary(training), "notes": notes}
    doc = _clean(doc)
    out = Path(cfg.out)
    with staged_dir(out) as stage:
        figures = []
        if plot_confusion(scores["pooled"]["confusion"], classes, stage / "confusion.png",
                          f"{method}: confusion (pooled over folds, row-normalised)"):
            figures.append("confusion.png")
        if cfg.report.tsne:
            # one fold's model: each fold's feature space is its own, pooling them would draw fold clusters
            fold = next(iter(per_fold))
            p = per_fold[fold]["test"]
            flags = np.array([c in amb for c in p.clip_ids], dtype=bool)
            if plot_tsne(p.features, p.labels, flags, classes, stage / "tsne.png",
                         max_clips=cfg.report.tsne_max_clips, seed=cfg.report.seed, fold=fold):
                figures.append("tsne.png")
        df.to_csv(stage / "predictions.csv", index=False)
        (stage / "metrics.json").write_text(json.dumps(doc, indent=2))
        (stage / "report.md").write_text(report_markdown(doc, figures))
    doc["figures"] = figures
    return doc


def _training_summary(training: dict | None) -> dict | None:
    if not training:
        return None
    keep = ("steps", "seconds", "precision", "precision_source", "trainable_params", "train_examples",
            "final_eval", "skipped")
    return {fold: {k: r.get(k) for k in keep if k in r} for fold, r in training.items()}


def paired_comparison(run_a: str | Path | pd.DataFrame, run_b: str | Path | pd.DataFrame, *, n_boot: int = 1000,
                      seed: int = 0, classes: list[str] | None = None) -> dict[str, Any]:
    """Is run a better than run b on the clips both predicted (same corpus)? UAR/WAR differences with paired
    bootstrap intervals, from the two runs' predictions.csv (a run folder, or its predictions as a frame, e.g.
    the ambiguous clips only). `classes`: the corpus's (None: the classes the two runs name); "n": the clips."""
    def frame(run: str | Path | pd.DataFrame) -> pd.DataFrame:
        if isinstance(run, pd.DataFrame):
            return run
        return pd.read_csv(Path(run) / "predictions.csv", dtype={"fold": str, "clip_id": str})

    both = frame(run_a).merge(frame(run_b), on=["fold", "clip_id"], suffixes=("_a", "_b"))
    if both.empty:
        raise ValueError("the two runs share no predicted clips" if isinstance(run_a, pd.DataFrame) else
                         f"{run_a} and {run_b} share no predicted clips")
    if (both["label_a"] != both["label_b"]).any():
        raise ValueError("the two runs disagree on true labels: they are not the same corpus")
    if classes is None:
        classes = sorted(set(both["label_a"]) | set(both["predicted_a"]) | set(both["predicted_b"]))
    idx = {c: k for k, c in enumerate(classes)}
    y = both["label_a"].map(idx).to_numpy(np.int64)
    r = paired_bootstrap_classification(both["predicted_a"].map(idx).to_numpy(np.int64),
                                        both["predicted_b"].map(idx).to_numpy(np.int64), y,
                                        n_classes=len(classes), n_boot=n_boot, seed=seed)
    return {**r, "n": int(len(both))}


# -- one table for runs of any kind on the same test clips (video models, prompted or fine-tuned VLMs) ------------

def compare_runs(runs: dict[str, str | Path], *, reference: str | None = None, n_boot: int = 1000,
                 seed: int = 0) -> dict[str, Any]:
    """UAR/WAR (95% bootstrap intervals over clips, fold mean ± sd) of finished runs, each a folder with a
    predictions.csv in the video report's layout (`video train`, `variants`, a video `prompt run`), and each run's
    paired difference against `reference` (default: the first). Refuses runs whose (fold, clip) sets or true
    labels differ, naming the run and the clips, so every row of the table is measured on the same test clips."""
    if not runs:
        raise ValueError("compare_runs needs at least one run")
    frames: dict[str, pd.DataFrame] = {}
    for name, folder in runs.items():
        path = Path(folder) / "predictions.csv"
        if not path.is_file():
            raise ValueError(f"run '{name}': {path} not found (a finished video run or video prompt run has one)")
        df = pd.read_csv(path, dtype={"fold": str, "clip_id": str})
        frames[name] = df.sort_values(["fold", "clip_id"]).reset_index(drop=True)
    reference = reference or next(iter(runs))
    if reference not in frames:
        raise ValueError(f"reference '{reference}' is not one of the runs {list(frames)}")
    ref = frames[reference]
    ref_keys = set(zip(ref["fold"], ref["clip_id"]))
    classes = [c[2:] for c in ref.columns if c.startswith("p_")]
    for name, df in frames.items():
        keys = set(zip(df["fold"], df["clip_id"]))
        if keys != ref_keys:
            only_ref, only_run = sorted(ref_keys - keys), sorted(keys - ref_keys)
            raise ValueError(f"run '{name}' was not tested on the clips of '{reference}': {len(only_run)} clip(s) only "
                             f"in '{name}' (first {only_run[:5]}), {len(only_ref)} only in '{reference}' (first "
                             f"{only_ref[:5]}); compare runs of the same corpus, folds and test clips")
        if [c[2:] for c in df.columns if c.startswith("p_")] != classes:
            raise ValueError(f"run '{name}' has other classes than '{reference}'")
        if (df["label"].to_numpy() != ref["label"].to_numpy()).any():
            raise ValueError(f"run '{name}' gives other true labels than '{reference}': not the same corpus")
    index = {c: k for k, c in enumerate(classes)}
    y = ref["label"].map(index).to_numpy(np.int64)
    pred = {n: df[[f"p_{c}" for c in classes]].to_numpy().argmax(axis=1) for n, df in frames.items()}
    rows: dict[str, Any] = {}
    for name, df in frames.items():
        s = scores_from_predictions(df, classes, n_boot=n_boot, seed=seed)
        rows[name] = {"folder": str(runs[name]), "pooled": {k: s["pooled"][k] for k in ("uar", "war", "n")},
                      "summary": s["summary"],
                      "vs_reference": None if name == reference else paired_bootstrap_classification(
                          pred[name], pred[reference], y, n_classes=len(classes), n_boot=n_boot, seed=seed)}
    return _clean({"reference": reference, "classes": classes, "n_clips": int(len(ref)),
                   "folds": sorted(set(ref["fold"])), "runs": rows})


def comparison_markdown(doc: dict[str, Any]) -> str:
    """The comparison as one markdown table (pooled UAR/WAR with intervals, fold mean, paired differences)."""
    ref = doc["reference"]
    lines = [f"{doc['n_clips']} test clips ({len(doc['folds'])} fold(s)), the same for every run. 95% bootstrap "
             f"intervals over clips; differences are paired (run − {ref}) on the same clips.", "",
             "| run | UAR | WAR | UAR fold mean | Δ UAR | Δ WAR |", "|---|---|---|---|---|---|"]
    for name, r in doc["runs"].items():
        d = r["vs_reference"]
        delta = ("reference", "") if d is None else tuple(
            f"{d[m]['diff']:+.3f} [{d[m]['ci95'][0]:+.3f}, {d[m]['ci95'][1]:+.3f}]" for m in ("uar", "war"))
        lines.append(f"| {name} | {_fmt(r['pooled']['uar'])} | {_fmt(r['pooled']['war'])} | "
                     f"{r['summary']['uar']['mean']:.3f} | {delta[0]} | {delta[1]} |")
    return "\n".join(lines) + "\n"
