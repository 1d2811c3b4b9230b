"""The study's outputs (`vlm-salience bci`): metrics.json, predictions.csv, report.md, plots, and the table printed
to the terminal. The prompting report (VLM strategies beside the BCI baselines) is prompting/report.py.

Everything is staged in a temporary folder and moved into --out only when complete, so a failure leaves nothing
half-written there.
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
from vlm_salience.predictions import condition_profiles
from vlm_salience.salience import SalienceLaw
from vlm_salience.study import StudyResult


def metric_label(name: str, response: str) -> str:
    """On rating corpora the label-distribution KLD is over normalised mean-profile heights: say so."""
    return "profile KLD" if name == "kld" and response == "ratings" else METRIC_LABELS[name]


def _shown_metrics(result: StudyResult) -> list[str]:
    """The metrics defined for this corpus (no rating KLD without a rating scale)."""
    return [k for k in METRICS if any(np.isfinite(m[k]["value"]) for m in result.metrics.values()
                                      if m.get(k, {}).get("value") is not None)]


def metrics_document(result: StudyResult) -> dict[str, Any]:
    c, cfg = result.corpus, result.config
    x = result.expressivity
    thr = cfg.expressivity.threshold
    expressive = None if x is None else SalienceLaw.plain(thr).is_expressive(x)
    methods = {}
    for m in cfg.methods:
        if m.name not in result.predictions:
            continue
        entry: dict[str, Any] = {"rule": m.rule, "salience": m.salience}
        entry.update(result.metrics.get(m.name, {}))
        entry["weights"] = result.weights.get(m.name)
        entry.update(result.comparisons.get(m.name, {}))
        methods[m.name] = entry
    doc = {
        "package_version": __version__,
        "corpus": {"name": c.name, "n_items": len(c.items), "response": c.response, "labels": list(c.labels),
                   "fingerprint": c.fingerprint, "has_combined": c.has_targets, "dropped": c.dropped.to_dict()},
        "expressivity": {"estimator": cfg.expressivity.estimator, "normalise": cfg.expressivity.normalise,
                         "threshold": thr, "n_expressive": None if x is None else int(expressive.sum()),
                         "n_subtle": None if x is None else int((~expressive).sum())},
        "config": cfg.model_dump(mode="json"),
        "fit_objective": cfg.fit_objective if c.has_targets else None,
        "resampling": result.resampling or None,
        "notes": result.notes,
        "methods": methods,
    }
    return json_safe(doc)


def summary_rows(result: StudyResult) -> list[dict[str, str]]:
    rows = []
    for m in result.config.methods:
        if m.name not in result.metrics:
            continue
        met = result.metrics[m.name]
        verdict = result.comparisons.get(m.name, {}).get("verdict", {})
        beats = []
        if verdict.get("beats_" + result.config.reference):
            beats.append(result.config.reference)
        if verdict.get("beats_control"):
            beats.append("control")
        if verdict.get("beats_null"):
            beats.append("null (product control)")
        row = {"method": m.name}
        row.update({metric_label(k, result.corpus.response): fmt_metric(met[k], 4 if "kld" in k else 3)
                    for k in _shown_metrics(result)})
        row[f"beats ({result.config.primary_metric})"] = ", ".join(beats) or "-"
        rows.append(row)
    return rows


def print_table(result: StudyResult) -> None:
    rows = summary_rows(result)
    if not rows:
        con = console(160)
        con.print(f"[bold]{result.corpus.name}[/bold]: no combined-condition judgements, nothing to score.")
        for note in result.notes:
            con.print(f"- {note}")
        return
    print_rows(("QUICK PREVIEW (--quick) of " if result.config.quick else "") +
               f"{result.corpus.name}: {len(result.corpus.items)} items, 95% intervals ({result.resampling}); "
               f"weights fitted by {result.config.fit_objective}", rows, result.notes, width=160)


# ---------------------------------------------------------------------------------------------------------------
# Plots

def plot_weights(result: StudyResult, path: Path) -> bool:
    """Fitted face weight against expressivity: each method's curve, and every item at its out-of-fold weight."""
    fitted = [m for m in result.config.methods if m.name in result.weights]
    if not fitted:
        return False
    plt = pyplot()
    rules = [r for r in ("product", "pool") if any(m.rule == r for m in fitted)]
    fig, axes = plt.subplots(1, len(rules), figsize=(6.2 * len(rules), 4.4), squeeze=False)
    grid = np.linspace(0, 1, 101)
    thr = result.config.expressivity.threshold
    for ax, rule in zip(axes[0], rules):
        for i, m in enumerate([m for m in fitted if m.rule == rule]):
            color = f"C{i}"
            pred = result.predictions[m.name]
            jitter = np.random.default_rng(i).normal(0, 0.006, len(pred))
            ax.scatter(pred.expressivity, pred.weights[:, 0] + jitter, s=9, alpha=0.35, color=color)
            w = result.weights[m.name]
            label = m.name
            if "items" in w or m.salience == "per_emotion":  # weights not a function of expressivity: dots only
                why = "per emotion" if m.salience == "per_emotion" else "by cue reliability"
                ax.scatter([], [], color=color, label=f"{label} (weights {why})")
                continue
            law = _law_from(w, m.salience, thr)
            wf, wc = law.weights(grid)
            gap = w.get("face_weight_gap", {})
            if gap.get("value") is not None:
                label += f" (gap {gap['value']:.2f} [{gap['ci95'][0]:.2f}, {gap['ci95'][1]:.2f}])"
            ax.plot(grid, wf, color=color, lw=2, label=label)
            ax.plot(grid, wc, color=color, lw=1, ls="--")
        ax.axvline(thr, color="grey", lw=0.8, ls=":")
        ax.axhline(1.0, color="grey", lw=0.5)
        ax.set_xlabel("facial expressivity (normalised on training faces)")
        ax.set_ylabel("w_face (solid), w_context (dashed)")
        ax.set_title("tempered BCI" if rule == "product" else "linear opinion pool")
        ax.legend(fontsize=7, loc="best")
    fig.suptitle(f"{result.corpus.name}: fitted cue weights (dots: items, out of fold)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def plot_weights_by_reliability(result: StudyResult, path: Path) -> bool:
    """Where the weights differ: every item's out-of-fold face weight (product: w_face; pool: face share) against
    its cues' log reliability ratio and against its expressivity, one colour per weighted method."""
    fitted = [m for m in result.config.methods if m.name in result.weights]
    if not fitted or result.reliability is None:
        return False
    plt = pyplot()
    rules = [r for r in ("product", "pool") if any(m.rule == r for m in fitted)]
    fig, axes = plt.subplots(len(rules), 2, figsize=(11.5, 4.0 * len(rules)), squeeze=False)
    rel = dict(zip(result.corpus.item_ids, result.reliability))
    for row, rule in zip(axes, rules):
        for i, m in enumerate([m for m in fitted if m.rule == rule]):
            pred = result.predictions[m.name]
            w = pred.weights[:, 0] if rule == "product" else pred.weights[:, 0] / pred.weights.sum(axis=1)
            z = np.array([rel[i_] for i_ in pred.item_ids])
            for ax, cov in zip(row, (z, pred.expressivity)):
                ax.scatter(cov, w, s=8, alpha=0.4, color=f"C{i}", label=m.name)
        ylab = "w_face (out of fold)" if rule == "product" else "face share (out of fold)"
        row[0].set_xlabel("log reliability ratio log(r_face / r_context) (> 0: the face is the more reliable cue)")
        row[1].set_xlabel("facial expressivity (normalised on training faces)")
        for ax in row:
            ax.set_ylabel(ylab)
            ax.set_title("tempered BCI" if rule == "product" else "linear opinion pool", fontsize=10)
            ax.legend(fontsize=7, loc="best", markerscale=1.5)
    fig.suptitle(f"{result.corpus.name}: fitted face weight against cue reliability and expressivity")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


RANK_METRICS = ("kld", "rmse", "r")
_HIGHER = {"r": True, "rmse": False, "kld": False}


def law_ranking(result: StudyResult) -> list[dict[str, Any]]:
    """Every weighted law against its control (the same rule with one global pair), best first on the primary
    metric: paired differences with 95% intervals on KLD, RMSE and r. A pool also faces the product control."""
    primary = result.config.primary_metric
    rows = []
    for m in result.config.methods:
        comp = result.comparisons.get(m.name, {})
        if "vs_control" not in comp:
            continue
        vc = comp["vs_control"]
        row = {"method": m.name, "rule": m.rule, "law": m.salience, "control": vc["control"],
               **{k: vc[k] for k in {*RANK_METRICS, primary} if k in vc}}
        beats = bool(vc.get(primary, {}).get("a_better"))
        if "vs_null" in comp:
            row["vs_null"] = comp["vs_null"]
            beats = beats and bool(comp["vs_null"].get(primary, {}).get("a_better"))
        row["beats"] = beats
        rows.append(row)
    sign = -1.0 if _HIGHER.get(primary, primary.endswith("_r")) else 1.0

    def key(r):
        d = r.get(primary, {}).get("diff")
        return sign * d if d is not None and np.isfinite(d) else np.inf
    return sorted(rows, key=key)


def _diff(v: dict[str, Any] | None) -> str:
    if not v or v.get("diff") is None or not np.isfinite(v["diff"]):
        return "n/a"
    lo, hi = v["ci95"]
    mark = " *" if v.get("a_better") else ""
    return f"{v['diff']:+.4f} [{lo:+.4f}, {hi:+.4f}]{mark}"


def _beats_text(row: dict[str, Any], primary: str) -> str:
    if row["beats"]:
        return "yes"
    if row.get(primary, {}).get("a_better"):  # a pool that beats the constant pool but not the product control
        return "no (beats the pool control, not the product control)"
    return "no"


def ranking_sentence(result: StudyResult, rows: list[dict[str, Any]]) -> str:
    """In words: which law, if any, beats its control on the primary metric (the paired interval excludes zero;
    a pool also the product control)."""
    primary = metric_label(result.config.primary_metric, result.corpus.response)
    name = result.corpus.name
    if not rows:
        return f"On {name} no salience law was fitted against a control."
    winners = [r for r in rows if r["beats"]]
    if not winners:
        best = rows[0]
        d = best.get(result.config.primary_metric, {})
        return (f"On {name}, no law beats the control on {primary}: every paired 95% interval includes zero or "
                f"favours the control (the nearest is {best['method']}, {primary} difference {_diff(d)}).")
    parts = [f"{r['method']} ({primary} {_diff(r.get(result.config.primary_metric))})" for r in winners]
    return (f"On {name}, {len(winners)} of {len(rows)} laws beat the control on {primary}: " + "; ".join(parts)
            + ". The best is " + winners[0]["method"] + ".")


def _ranking_lines(result: StudyResult) -> list[str]:
    rows = law_ranking(result)
    if not rows:
        return []
    resp = result.corpus.response
    lines = ["## Every law against its control", "",
             "| rank | method | rule | law | " + " | ".join(f"{metric_label(k, resp)} diff [95% CI]" for k in RANK_METRICS)
             + " | beats the control |", "|---|---|---|---|" + "---|" * len(RANK_METRICS) + "---|"]
    for i, r in enumerate(rows, 1):
        lines.append(f"| {i} | {r['method']} | {r['rule']} | {r['law']} | "
                     + " | ".join(_diff(r.get(k)) for k in RANK_METRICS) + f" | {_beats_text(r, result.config.primary_metric)} |")
    lines += ["", f"Differences are law minus control (negative is better for KLD and RMSE, positive for r), paired "
              f"over the same resamples ({result.resampling}); * marks an interval that excludes zero in the law's "
              f"favour. Ranked by the primary metric ({result.config.primary_metric}); a pool must also beat the "
              "product control to count.", "", ranking_sentence(result, rows), ""]
    return lines


def _law_from(desc: dict[str, Any], kind: str, threshold: float):
    from vlm_salience.salience import SalienceLaw

    if kind == "per_emotion":
        e = desc["by_emotion"]
        return SalienceLaw.per_emotion(e["w_face"], e["w_context"], threshold)
    if kind == "learned":
        return SalienceLaw.learned(desc["total"], desc["intercept"], desc["coef"], desc["feature_mean"],
                                   desc["feature_sd"], threshold)

    if kind == "control":
        return SalienceLaw.control(desc["w_face"], desc["w_context"], threshold)
    if kind == "hard":
        s, e = desc["subtle"], desc["expressive"]
        return SalienceLaw.hard((s["w_face"], s["w_context"]), (e["w_face"], e["w_context"]), threshold)
    if kind == "logistic":
        return SalienceLaw.logistic(desc["total"], desc["slope"], desc["alpha"], threshold)
    if kind == "reliability":
        return SalienceLaw.reliability(desc["total"], desc["gamma"], desc["alpha"], threshold)
    return SalienceLaw.plain(threshold)


def plot_pred_vs_obs(result: StudyResult, path: Path) -> bool:
    names = [m.name for m in result.config.methods if m.name in result.metrics]
    if not names or result.observed is None:
        return False
    plt = pyplot()
    cols = min(4, len(names))
    rows = int(np.ceil(len(names) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.3 * cols, 3.2 * rows), squeeze=False)
    obs = result.observed
    what = "rating" if obs.ratings is not None else "probability"
    for ax, name in zip(axes.ravel(), names):
        pred = result.predictions[name]
        o = obs.align(pred.item_ids).profile.ravel()
        p = pred.profile.ravel()
        ax.scatter(o, p, s=5, alpha=0.35)
        lo, hi = float(np.nanmin([o.min(), p.min()])), float(np.nanmax([o.max(), p.max()]))
        ax.plot([lo, hi], [lo, hi], color="grey", lw=0.8)
        ax.set_title(f"{name}\nr = {result.metrics[name]['r']['value']:.3f}", fontsize=9)
        ax.set_xlabel(f"observed {what}", fontsize=8)
        ax.set_ylabel(f"predicted {what}", fontsize=8)
    for ax in axes.ravel()[len(names):]:
        ax.axis("off")
    fig.suptitle(f"{result.corpus.name}: predicted vs observed (every item x emotion)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def profile_tables(result: StudyResult) -> dict[str, pd.DataFrame]:
    c = result.corpus
    if not c.categorical_features:
        return {}
    by = c.categorical_features[0]
    out = {}
    for cond, name in (("face", "face-only"), ("context", "context-only"), ("combined", "combined")):
        t = condition_profiles(c, cond, by)
        if len(t):
            out[name] = t
    return out


def plot_profiles(tables: dict[str, pd.DataFrame], by: str, title: str, path: Path) -> bool:
    if not tables:
        return False
    plt = pyplot()
    width = 0.42 * len(next(iter(tables.values())).columns) * len(tables) + 2.5
    fig, axes = plt.subplots(1, len(tables), figsize=(width, 4.2), squeeze=False, layout="constrained")
    vmax = max(float(t.to_numpy().max()) for t in tables.values())
    vmin = min(float(t.to_numpy().min()) for t in tables.values())
    for ax, (name, t) in zip(axes[0], tables.items()):
        im = ax.imshow(t.to_numpy(), aspect="auto", cmap="viridis", vmin=vmin, vmax=vmax)
        ax.set_yticks(range(len(t.index)), [str(i) for i in t.index])
        ax.set_xticks(range(len(t.columns)), list(t.columns), rotation=70, fontsize=7)
        ax.set_title(f"{name} judgements")
    axes[0][0].set_ylabel(by)
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label="mean rating / choice share")
    fig.suptitle(title)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return True


# ---------------------------------------------------------------------------------------------------------------

def report_markdown(result: StudyResult, doc: dict[str, Any], figures: list[str],
                    profiles: dict[str, pd.DataFrame]) -> str:
    c, cfg = result.corpus, result.config
    lines = [f"# Cue-integration study: {c.name}" + (" (QUICK PREVIEW: rough intervals, not for reporting)"
                                                      if cfg.quick else ""), ""]
    if c.has_targets:
        lines.append(f"{len(c.items)} items ({c.response} over {len(c.labels)} emotion labels). "
                     f"Expressivity: `{cfg.expressivity.estimator}`, normalised ({cfg.expressivity.normalise}) on "
                     f"training items, expressive above {cfg.expressivity.threshold}. "
                     f"Cross-validation: {cfg.cv.scheme} over `{cfg.cv.group}`; expressivity scale and weights "
                     f"fitted on training folds only, by {cfg.fit_objective} (the same objective for every law). "
                     f"Context model: {cfg.cue_models.context_model}. Target: combined-condition cell "
                     f"{cfg.target}s. Intervals: {result.resampling}.")
    else:
        lines.append(f"{len(c.items)} items ({c.response} over {len(c.labels)} emotion labels). This corpus has no "
                     "combined-condition judgements, so there is no target: nothing was cross-validated, no weights "
                     "were fitted and nothing is scored. Plain BCI and the single cues predict every item from the "
                     f"face-only and context-only judgements (context model: {cfg.cue_models.context_model}).")
    lines.append("")
    if c.dropped.total:
        lines += ["## Dropped rows (--drop-invalid)", ""] + [f"- {s}" for s in c.dropped.lines()] + [""]
    if result.notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in result.notes] + [""]
    rows = summary_rows(result)
    if rows:
        lines += [f"## Scores (95% intervals: {result.resampling})", "", markdown_table(rows), "",
                  f"'beats' lists the comparisons a method wins on the primary metric ({cfg.primary_metric}) by a "
                  "paired bootstrap whose 95% interval excludes zero. Salience counts only where it beats the "
                  "control (one global weight pair) and, for a pool, also the product control (a pool whose share "
                  "moves with expressivity beats a constant pool even without a salience law). Every metric's "
                  "comparison is in metrics.json."
                  + (" Profile KLD compares normalised mean-profile heights (as in Ong et al. 2015); rating KLD "
                     "compares each emotion's distribution of ratings over the scale, averaged over emotions."
                     if c.response == "ratings" else ""), ""]
        won = []
        for name, m in doc["methods"].items():
            v = m.get("verdict") or {}
            if "metrics_won_vs_control" in v:
                won.append(f"- {name} vs its control: wins on {', '.join(v['metrics_won_vs_control']) or 'nothing'}")
            if "metrics_won_vs_null" in v:
                won.append(f"- {name} vs the product control: wins on "
                           f"{', '.join(v['metrics_won_vs_null']) or 'nothing'}")
            if "salience_evidence" in v:
                won.append(f"- {name}: evidence of salience (beats the no-law models on {cfg.primary_metric} and "
                           f"a gap beyond the null): {'yes' if v['salience_evidence'] else 'no'}")
        if won:
            lines += won + [""]
        lines += _ranking_lines(result)
    if result.weights:
        lines += ["## Fitted weights (all items)", "",
                  "| method | w_face subtle -> expressive | w_context subtle -> expressive | gap [95% CI] | "
                  "null gap | excess over null | evidence |",
                  "|---|---|---|---|---|---|---|"]
        x = result.expressivity
        thr = cfg.expressivity.threshold
        for name, w in result.weights.items():
            m = next(mm for mm in cfg.methods if mm.name == name)
            law = _law_from(w, m.salience, thr)
            if "items" in w:  # per-item weights (a reliability law needs each item's cue variances)
                wf, wc = np.asarray(w["items"]["w_face"]), np.asarray(w["items"]["w_context"])
            elif m.salience == "per_emotion":  # constant over items: report the per-emotion pairs' geometric mean
                wf, wc = (np.full(len(x), np.exp(np.log(w["by_emotion"][k]).mean())) for k in ("w_face", "w_context"))
            else:
                wf, wc = law.weights(x)
            hi = law.is_expressive(x)
            lo = ~hi

            def mean(a, mask):
                return f"{a[mask].mean():.2f}" if mask.any() else "n/a"
            scale = "share" if m.rule == "pool" else "w_face"
            lines.append(f"| {name} | {mean(wf, lo)} -> {mean(wf, hi)} | {mean(wc, lo)} -> {mean(wc, hi)} | "
                         f"{fmt_metric(w.get('face_weight_gap'))} ({scale}) | {fmt_metric(w.get('null_gap'))} | "
                         f"{fmt_metric(w.get('excess_gap'))} | {'yes' if w.get('gap_evidence') else 'no'} |")
        lines += ["", "The gap is mean w_face over expressive items minus over subtle ones (refits on "
                  f"{cfg.bootstrap.weights_n} resamples, {result.resampling}); the salience hypothesis predicts it "
                  "to be positive. A pool is fitted in face share alone (w_face + w_context = 1), so its gap is a "
                  "gap in face share. A gap appears even without a salience law (a pool's share moves with "
                  "expressivity under a constant-weight product, and face cues estimated from few raters err more, "
                  "relative to their evidence, on subtle faces), so the null gap is what the same fit finds on "
                  "no-law data (the product control's predictions as targets, face cues re-estimated from "
                  "simulated raters), and only the excess counts: 'evidence' means its interval excludes zero. A "
                  "reliability law's evidence is its exponent gamma beyond the null's; a per-emotion or learned "
                  "law's is the spread (sd) of its face share over emotions or items beyond the spread the same law "
                  "finds when refitted on no-law corpora (one constant pair per block, combined judgements drawn "
                  "again, face cues re-estimated from simulated raters): 'evidence' means the spread exceeds the "
                  "null's 97.5th percentile. A per-emotion or learned law's wins over its control count only beyond "
                  "the out-of-fold gain the same fits make on no-law corpora (with face cues estimated from few "
                  "raters, extra parameters predict better with no law at all). Beside a valence block a per-emotion "
                  "law is nested in its control: its global pair is the control's, so it predicts valence as the "
                  "control does.", ""]
        lines += _sized_law_lines(result)
    per = [(n, m["per_emotion"]) for n, m in doc["methods"].items() if m.get("per_emotion")]
    if per:
        labels = list(per[0][1])
        lines += ["## Per-emotion r", "", "| method | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
        for n, pe in per:
            lines.append(f"| {n} | " + " | ".join("n/a" if pe[lab]["r"] is None else f"{pe[lab]['r']:.2f}"
                                                   for lab in labels) + " |")
        lines.append("")
    if profiles:
        by = c.categorical_features[0]
        lines += [f"## Mean emotion profiles per {by}", ""]
        for name, t in profiles.items():
            lines += [f"### {name}", "", t.round(2).to_markdown() if _has_tabulate() else t.round(2).to_string(),
                      ""]
    for fig in figures:
        lines += [f"![{fig}]({fig})", ""]
    return "\n".join(lines)


def _sized_law_lines(result: StudyResult) -> list[str]:
    """Per-emotion pairs and gate coefficients, with the spread statistic against its null."""
    lines = []
    for name, w in result.weights.items():
        if "share_spread" not in w:
            continue
        spread = (f"face-share spread {fmt_metric(w['share_spread'])}, null {fmt_metric(w.get('null_spread'))}, excess "
                  f"{fmt_metric(w.get('excess_spread'))}: evidence {'yes' if w.get('gap_evidence') else 'no'}")
        if "by_emotion" in w:
            e = w["by_emotion"]
            labels = e.get("labels") or [str(i) for i in range(len(e["w_face"]))]
            lines += [f"### {name}: one weight pair per emotion (prior sd {result.config.laws.per_emotion_sd} on "
                      f"log-weight deviations from the global pair {w['w_face']:.2f}, {w['w_context']:.2f})", "",
                      "| | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels),
                      "| w_face | " + " | ".join(f"{v:.2f}" for v in e["w_face"]) + " |",
                      "| w_context | " + " | ".join(f"{v:.2f}" for v in e["w_context"]) + " |",
                      "| face share | " + " | ".join(f"{v:.2f}" for v in e["face_share"]) + " |", "", spread, ""]
        elif "coef" in w:
            lines += [f"### {name}: learned gate (prior sd {result.config.laws.gate_sd} on the coefficients of "
                      "standardised features)", "",
                      f"face share = sigmoid({w['intercept']:+.2f} " + " ".join(
                          f"{c:+.2f} z({f})" for c, f in zip(w["coef"], w.get("features", []))) + f"), total "
                      f"{w['total']:.2f}; {spread}", ""]
    return lines


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
    except ImportError:
        return False
    return True


def write_outputs(result: StudyResult, out: str | Path) -> Path:
    out = Path(out)
    doc = metrics_document(result)
    frames = [p.to_frame() for p in result.predictions.values()]
    if result.observed is not None:
        frames.append(result.observed.to_frame())
    profiles = profile_tables(result)
    with staged_dir(out) as stage:
        figures = []
        if plot_weights(result, stage / "weights.png"):
            figures.append("weights.png")
        if plot_weights_by_reliability(result, stage / "weights_by_reliability.png"):
            figures.append("weights_by_reliability.png")
        if plot_pred_vs_obs(result, stage / "pred_vs_obs.png"):
            figures.append("pred_vs_obs.png")
        if profiles and plot_profiles(profiles, result.corpus.categorical_features[0],
                                      f"{result.corpus.name}: mean emotion profile per "
                                      f"{result.corpus.categorical_features[0]}", stage / "profiles.png"):
            figures.append("profiles.png")
        write_text(stage / "metrics.json", json.dumps(doc, indent=2))
        write_text(stage / "predictions.csv", pd.concat(frames, ignore_index=True).to_csv(index=False))
        write_text(stage / "report.md", report_markdown(result, doc, figures, profiles))
    return out
