"""`vlm-salience video ...`: synthetic clips, prepare, train, eval, describe, compare.

Names no model: `video train` trains whatever `model.kind` the YAML gives (video/registry.py), and a YAML's
`variants:` list is trained and compared by video/variants.py whatever kinds it holds.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from vlm_salience.cli.common import (add_overrides, check_out_dir, command, config_command, emit_json, json_flag,
                                     print_summary, with_out)
from vlm_salience.errors import ConfigError


def cmd_video_synth(args: argparse.Namespace) -> int:
    from vlm_salience.config import load_config
    from vlm_salience.data.video.synth import ClipSynthConfig, write_clip_corpus
    from vlm_salience.resources import shipped

    cfg = load_config(args.config or shipped("configs/synth/clips.yaml"), ClipSynthConfig, args.set)
    path = write_clip_corpus(cfg, check_out_dir(args.out), progress=not args.quiet)
    print(f"wrote the synthetic clip corpus to {args.out}: generic layout {path}, DFEW-like layout "
          f"{Path(args.out) / 'dfew' / 'data.yaml'}, per-clip manifest {Path(args.out) / 'manifest.csv'}")
    return 0


def print_video_report(doc: dict[str, Any], out: str | Path) -> None:
    from vlm_salience.formatting import fmt_metric

    for method, s in doc.get("methods", {}).items():
        pooled = s.get("pooled", {})
        line = f"{method}: UAR {fmt_metric(pooled.get('uar'))}, WAR {fmt_metric(pooled.get('war'))}"
        summ = s.get("summary") or {}
        if isinstance(summ.get("uar"), dict) and "mean" in summ["uar"] and len(s.get("folds", {})) > 1:
            line += f"; over folds UAR {summ['uar']['mean']:.3f} ± {summ['uar'].get('sd', float('nan')):.3f}"
        if "ambiguous" in s:
            a = s["ambiguous"]
            line += f"; ambiguous clips (n={a['n']}) UAR {fmt_metric(a['uar'])}, pair chance {a['pair_chance']:.2f}"
        print(line)
    for note in doc.get("notes", []):
        print("  note: " + note)
    print(f"wrote {out}/metrics.json, predictions.csv, report.md and plots")


def cmd_video_prepare(args: argparse.Namespace) -> int:
    from vlm_salience.video.prepare import load_prepare_config, prepare_corpus

    cfg = load_prepare_config(args.config, args.set)
    out = args.out or "video_cache"
    summary = prepare_corpus(args.data, cfg, check_out_dir(out), fold=args.fold, part=args.part,
                             drop_invalid=args.drop_invalid, progress=not args.quiet, workers=args.workers,
                             data_overrides=args.data_set, by_rank=True)
    if summary.get("rank", 0) != 0:  # under accelerate launch: rank 0 reports for all
        return 0
    invalid = summary.get("invalid") or []
    print(f"prepared {summary.get('prepared')} clip(s), {summary.get('skipped')} already cached, "
          f"{len(invalid)} invalid; face detection missed {summary.get('missed_detection_frames')} of "
          f"{summary.get('detection_frames')} frames -> {out}")
    for bad in invalid:
        print(f"  skipped {bad.get('clip_id')}: {bad.get('error')}")
    emit_json(args.json, summary)
    return 0


def print_variants(doc: dict[str, Any], out: str | Path) -> None:
    from vlm_salience.formatting import fmt_metric

    ref = doc.get("compare_to")
    for name, v in doc.get("variants", {}).items():
        line = f"{name}: UAR {fmt_metric(v['all'].get('uar'))}, WAR {fmt_metric(v['all'].get('war'))}"
        if "ambiguous" in v:
            line += f"; ambiguous clips UAR {fmt_metric(v['ambiguous'].get('uar'))}"
        p = doc.get("paired", {}).get(name, {}).get("all", {}).get("uar")
        if p:
            verdict = "better" if p.get("a_better") else "no win"
            line += f"; vs {ref}: {p['diff']:+.3f} [{p['ci95'][0]:+.3f}, {p['ci95'][1]:+.3f}] ({verdict})"
        print(line)
    print(f"wrote the comparison (metrics.json, report.md, convergence.png) in {Path(out) / 'comparison'}; each "
          f"variant's own report in {Path(out) / 'variants'}")


def video_overrides(args: argparse.Namespace) -> list[str]:
    """--set and --out of a video YAML, with --data-set appended to its data.overrides (the one syntax every
    command that reads a data config takes)."""
    import json

    from vlm_salience.config import apply_overrides, read_yaml

    sets = with_out(args)
    if getattr(args, "data_set", None):
        data = apply_overrides(read_yaml(args.config), list(args.set)).get("data") or {}
        current = list(data.get("overrides") or []) if isinstance(data, dict) else []
        sets.append("data.overrides=" + json.dumps(current + list(args.data_set)))
    return sets


def cmd_video_train(args: argparse.Namespace) -> int:
    from vlm_salience.video.config import load_video_config
    from vlm_salience.video.train import train_video
    from vlm_salience.video.variants import has_variants, train_variants

    overrides = video_overrides(args)
    if has_variants(args.config, overrides):  # a list of model variants (ablations) compared side by side
        doc = train_variants(args.config, overrides, resume=args.resume, progress=not args.quiet)
        if doc.get("stopped"):
            print(f"stopped (SIGTERM) in variant {doc.get('variant')}; continue with --resume")
            return 0
        print_variants(doc, load_video_config(args.config, overrides)[0].out)
        emit_json(args.json, doc)
        return 0
    result = train_video(args.config, overrides, resume=args.resume, progress=not args.quiet)
    if result.get("stopped"):
        print("stopped (SIGTERM) after a checkpoint; continue with --resume")
        return 0
    if result.get("report") is not None:
        print_video_report(result["report"], result["report"].get("config", {}).get("out", ""))
    emit_json(args.json, result.get("report"))
    return 0


def cmd_video_eval(args: argparse.Namespace) -> int:
    from vlm_salience.video.config import load_video_config
    from vlm_salience.video.train import eval_video
    from vlm_salience.video.variants import eval_variants, has_variants

    overrides = video_overrides(args)
    if has_variants(args.config, overrides):
        doc = eval_variants(args.config, overrides, progress=not args.quiet)
        print_variants(doc, load_video_config(args.config, overrides)[0].out)
        emit_json(args.json, doc)
        return 0
    doc = eval_video(args.config, overrides, progress=not args.quiet)
    print_video_report(doc, doc.get("config", {}).get("out", ""))
    emit_json(args.json, doc)
    return 0


def cmd_video_describe(args: argparse.Namespace) -> int:
    from vlm_salience.grace.text import describe_video

    summary = describe_video(args.config, with_out(args), progress=not args.quiet)
    print_summary({k: v for k, v in summary.items() if not isinstance(v, (list, dict))})
    emit_json(args.json, summary)
    return 0


def cmd_video_compare(args: argparse.Namespace) -> int:
    import json

    from vlm_salience.atomic import write_text
    from vlm_salience.video.report import compare_runs, comparison_markdown

    runs = {}
    for spec in args.runs:
        name, _, folder = spec.rpartition("=") if "=" in spec else (Path(spec).name, "", spec)
        runs[name] = folder
    try:
        doc = compare_runs(runs, reference=args.reference, n_boot=args.n_boot)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    table = comparison_markdown(doc)
    print(table)
    if args.out:
        out = Path(args.out)
        write_text(out / "comparison.json", json.dumps(doc, indent=2))
        write_text(out / "comparison.md", table)
        print(f"wrote {out}/comparison.json and comparison.md")
    emit_json(args.json, doc)
    return 0


def add_commands(sub) -> None:
    video = sub.add_parser("video", help="video emotion recognition: synthetic clips, prepare, train, eval")
    vsub = video.add_subparsers(dest="video_command", required=True, metavar="COMMAND")
    vs = command(vsub, "synth", help="write the synthetic clip corpus (generic and DFEW-like layouts)",
                 example="vlm-salience video synth --out runs/clips --config configs/synth/clips_no_law.yaml")
    vs.add_argument("--out", required=True, help="folder for the clips, their CSVs, data YAMLs and manifest")
    vs.add_argument("--config", help="clip synth YAML (default: configs/synth/clips.yaml)")
    add_overrides(vs, example="clips=70")
    vs.set_defaults(func=cmd_video_synth)
    vp = command(vsub, "prepare", help="detect, track and crop the face and scene streams of every clip into a "
                 "frame cache (resumable; training never decodes video again)",
                 example="vlm-salience video prepare --data configs/data/dfew.yaml --data-set root=/data/DFEW "
                         "--fold set_1 --part test --out /data/dfew_cache")
    vp.add_argument("--data", required=True, help="video data YAML (configs/data/dfew.yaml, ...)")
    vp.add_argument("--config", help="prepare YAML (frames per segment, stream sizes, detector); default settings "
                    "without it")
    vp.add_argument("--out", help="cache folder (default ./video_cache)")
    vp.add_argument("--fold", help="only the clips of this fold (with --part: of that part)")
    vp.add_argument("--part", choices=["all", "train", "test", "val"], default="all",
                    help="only the clips of this part of --fold (of every fold without --fold); default all. In "
                         "5-fold cross-validation a fold's train and test parts are the whole corpus")
    vp.add_argument("--workers", type=int, default=1, help="processes decoding and detecting in parallel")
    vp.add_argument("--drop-invalid", action="store_true", help="skip unreadable clips and report them, not fail")
    add_overrides(vp, example="streams.face_size=112")
    add_overrides(vp, "--data-set", "data config", "root=/data/DFEW")
    json_flag(vp, "the prepare summary")
    vp.set_defaults(func=cmd_video_prepare)
    vt = config_command(vsub, "train", cmd_video_train, "configs/video/<name>.yaml",
                        help="train a video emotion recogniser on every fold and report UAR/WAR (works under "
                             "`accelerate launch`)",
                        example="vlm-salience video train configs/video/baseline_synthetic.yaml")
    vt.add_argument("--resume", action="store_true", help="continue from the newest checkpoint of each fold")
    add_overrides(vt, "--data-set", "data config", "root=/data/DFEW")
    json_flag(vt, "the run's metrics")
    ve = config_command(vsub, "eval", cmd_video_eval, "the video YAML that was trained",
                        help="predict every fold's test clips with the chosen weights and rewrite the report",
                        example="vlm-salience video eval configs/video/baseline_synthetic.yaml")
    add_overrides(ve, "--data-set", "data config", "root=/data/DFEW")
    json_flag(ve, "the run's metrics")
    vd = config_command(vsub, "describe", cmd_video_describe, "a describe YAML (configs/grace/describe_*.yaml)",
                        help="GRACE's coarse-to-fine text: describe every clip with a VLM, refine it into facial "
                             "actions, intensity and time course (cached, resumable)",
                        example="vlm-salience video describe configs/grace/describe_synthetic.yaml")
    json_flag(vd, "the summary")
    vc = command(vsub, "compare", help="one UAR/WAR table of finished runs on the same test clips (video models, "
                 "video prompt runs), with paired differences against a reference; refuses runs on other clips",
                 example="vlm-salience video compare runs/video_baseline_synthetic runs/prompt_video/tiny__zero_shot")
    vc.add_argument("runs", nargs="+", help="run folders with a predictions.csv (NAME=FOLDER to name a row)")
    vc.add_argument("--reference", help="the row the others are compared to (default: the first)")
    vc.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples (default 1000)")
    vc.add_argument("--out", help="also write comparison.json and comparison.md into this folder")
    json_flag(vc, "the comparison")
    vc.set_defaults(func=cmd_video_compare)
