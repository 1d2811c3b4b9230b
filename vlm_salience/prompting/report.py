"""The prompting report (`vlm-salience prompt run`, `route`): VLM strategies beside the BCI baselines on the same
held-out items, as metrics.json, predictions.csv, report.md, plots and a terminal table. Needs no study: the
experiment result carries its own metrics. The study's report is study_report.py.

Everything is staged in a temporary folder and moved into --out only when complete.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from vlm_salience import __version__
from vlm_salience.atomic import staged_dir, write_text
from vlm_salience.formatting import METRIC_LABELS, console, fmt_metric, json_safe, markdown_table, print_rows, pyplot
from vlm_salience.metrics import METRICS


def experiment_rows(res) -> list[dict[str, str]]:
    rows = []
    for name, met in res.metrics.items():
        fail = res.failures.get(name, {})
        row = {"method": name}
        row.update({METRIC_LABELS[k]: fmt_metric(met[k], 4 if k == "kld" else 3) for k in METRICS})
        row["coverage"] = f"{met['coverage']:.0%}"
        row["unparseable"] = str(fail.get("unparseable", "-")) if not name.startswith("bci/") else "-"
        rows.append(row)
    return rows


def plot_strategy(res, name: str, path: Path) -> bool:
    if res.observed is None or name not in res.predictions:
        return False
    plt = pyplot()
    pred = res.predictions[name]
    obs = res.observed.align(pred.item_ids)
    ok = pred.ok
    fig, axes = plt.subplots(1, 2, figsize=(8.4, 3.8))
    what = "rating" if obs.ratings is not None else "probability"
    axes[0].scatter(obs.profile[ok].ravel(), pred.profile[ok].ravel(), s=6, alpha=0.4)
    axes[0].set_xlabel(f"observed {what}")
    axes[0].set_ylabel(f"predicted {what}")
    axes[1].scatter(obs.valence[ok], pred.valence[ok], s=10, alpha=0.5, color="C1")
    axes[1].set_xlabel("observed valence")
    axes[1].set_ylabel("predicted valence")
    met = res.metrics.get(name, {})
    title = (f"{name}: r = {met['r']['value']:.2f}, valence r = {met['valence_r']['value']:.2f}"
             if met and met.get("n_items") else name)
    fig.suptitle(f"{title} ({int(ok.sum())}/{len(ok)} items answered)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_expressivity_agreement(res, path: Path) -> bool:
    entries = [(m, e) for m, e in res.expressivity.items() if "agreement_with_judgements" in e]
    if not entries:
        return False
    from vlm_salience.expressivity import Normaliser, raw_scores

    plt = pyplot()
    fig, axes = plt.subplots(1, len(entries), figsize=(4.2 * len(entries), 3.8), squeeze=False)
    est = entries[0][1]["agreement_with_judgements"]["estimator"]
    raw = raw_scores(res.corpus, est)
    judged = dict(zip(res.corpus.item_ids, Normaliser.fit(raw)(raw)))
    for ax, (model, e) in zip(axes[0], entries):
        pred = next(p for k, p in res.predictions.items() if k.startswith(model + "/") and p.expressivity is not None)
        xj = np.array([judged[i] for i in pred.item_ids])
        ax.scatter(xj, pred.expressivity, s=10, alpha=0.5)
        a = e["agreement_with_judgements"]
        ax.set_title(f"{model}: Pearson {a['pearson_r']:.2f}, Spearman {a['spearman_r']:.2f}", fontsize=9)
        ax.set_xlabel(f"expressivity from face-only judgements ({est})")
        ax.set_ylabel(f"VLM expressivity ({e['score']})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_experiment_outputs(res, out: str | Path) -> Path:
    out = Path(out)
    methods: dict[str, Any] = {}
    for name, pred in res.predictions.items():
        entry: dict[str, Any] = dict(res.metrics.get(name, {}))
        if name in res.failures:
            entry["failures"] = res.failures[name]
        if name in res.throughput:
            entry["items_per_s"] = res.throughput[name]
        methods[name] = entry
    doc = json_safe({
        "package_version": __version__, "experiment": res.title,
        "corpus": {"name": res.corpus.name, "fingerprint": res.corpus.fingerprint, "test_items": len(res.test_ids),
                   "split": res.split},
        "models": [m["name"] for m in res.models], "expressivity": res.expressivity, "notes": res.notes,
        **res.extra, "methods": methods, "config": res.config,
    })
    frames = []
    for name, pred in res.predictions.items():
        f = pred.to_frame()
        f["method"] = name
        frames.append(f)
    if res.observed is not None:
        frames.append(res.observed.to_frame())
    with staged_dir(out) as stage:
        (stage / "plots").mkdir()
        figures = []
        for name in res.predictions:
            if name.startswith("bci/"):
                continue
            fname = "plots/" + name.replace("/", "__") + ".png"
            if plot_strategy(res, name, stage / fname):
                figures.append(fname)
        if plot_expressivity_agreement(res, stage / "expressivity_agreement.png"):
            figures.insert(0, "expressivity_agreement.png")
        write_text(stage / "metrics.json", json.dumps(doc, indent=2))
        write_text(stage / "predictions.csv", pd.concat(frames, ignore_index=True).to_csv(index=False))
        write_text(stage / "report.md", experiment_markdown(res, figures))
    return out


def experiment_markdown(res, figures: list[str]) -> str:
    lines = [f"# {res.title}", "",
             f"Corpus {res.corpus.name}: {len(res.test_ids)} held-out test items (split over "
             f"`{res.split.get('group')}`); BCI baselines and salience laws fitted on the training items. Models: "
             + ", ".join(f"`{m['name']}`" for m in res.models) + ".", ""]
    tiny = [m["name"] for m in res.models if m.get("tiny")]
    if tiny:
        lines += [f"**{', '.join(tiny)} is a tiny randomly initialised model: a stand-in that exercises the whole "
                  "pipeline, not a real VLM. Its scores are chance-level by construction.**", ""]
    if res.notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in res.notes] + [""]
    rows = experiment_rows(res)
    if rows:
        lines += ["## Scores on the test items (95% bootstrap intervals)", "", markdown_table(rows), ""]
    fails = [(k, v) for k, v in res.failures.items() if v["failed"]]
    if fails:
        lines += ["## Failed items", "", "| method | failed | unparseable | by kind |", "|---|---|---|---|"]
        lines += [f"| {k} | {v['failed']}/{v['items']} | {v['unparseable']} | "
                  + "; ".join(f"{kk}: {vv}" for kk, vv in v["by_kind"].items()) + " |" for k, v in fails]
        lines.append("")
    if res.extra.get("gate"):
        g = res.extra["gate"]
        lines += ["## Learned gate", "", f"share of the face expert = sigmoid(w . features), fitted on "
                  f"{g['validation_items']} validation items: " + ", ".join(
                      f"{f} {w:+.2f}" for f, w in zip(g["features"], g["weights"])), ""]
    if res.extra.get("routing_vs_best_single"):
        rv = res.extra["routing_vs_best_single"]
        lines += _comparison_table(f"Routed mixtures against the better expert alone ({rv['best_single']}, by KLD)",
                                   rv["comparisons"])
        for other, comps in res.extra.get("routing_vs_other_adapters", {}).items():
            lines += _comparison_table(f"Routed mixtures against {other}", comps)
    if res.extra.get("calibration"):
        from vlm_salience.calibration import calibration_markdown

        lines += calibration_markdown(res.extra)
    if res.expressivity:
        lines += ["## Expressivity from the model", ""]
        for model, e in res.expressivity.items():
            a = e.get("agreement_with_judgements")
            agree = (f"; agreement with `{a['estimator']}` from face-only judgements over {a['items']} items: "
                     f"Pearson r = {a['pearson_r']:.3f}, Spearman r = {a['spearman_r']:.3f}") if a else ""
            lines.append(f"- `{e['estimator']}` ({e['score']}){agree}")
        lines.append("")
    if res.throughput:
        lines += ["## Throughput", ""] + [f"- {k}: {v:.2f} items/s" for k, v in res.throughput.items()] + [""]
    for fig in figures:
        lines += [f"![{fig}]({fig})", ""]
    return "\n".join(lines)


def _comparison_table(title: str, comparisons: dict[str, Any]) -> list[str]:
    lines = [f"## {title}", "", "| routed | KLD diff [95% CI] | valence r diff [95% CI] | worse on | better on |",
             "|---|---|---|---|---|"]
    for name, c in comparisons.items():
        lower = ("rmse", "kld", "valence_mse")
        worse = [m for m, v in c.items() if (v["ci95"][0] > 0 if m in lower else v["ci95"][1] < 0)]
        better = [m for m, v in c.items() if v.get("a_better")]
        lines.append(f"| {name} | {c['kld']['diff']:+.4f} [{c['kld']['ci95'][0]:+.4f}, {c['kld']['ci95'][1]:+.4f}] | "
                     f"{c['valence_r']['diff']:+.3f} [{c['valence_r']['ci95'][0]:+.3f}, "
                     f"{c['valence_r']['ci95'][1]:+.3f}] | {', '.join(worse) or 'nothing'} | "
                     f"{', '.join(better) or 'nothing'} |")
    return lines + [""]


def print_experiment_table(res) -> None:
    rows = experiment_rows(res)
    if not rows:
        console(180).print(f"{res.title}: predictions only (no combined judgements to score against)")
        return
    print_rows(f"{res.title}: {len(res.test_ids)} test items", rows, res.notes, width=180)
