"""vlm-salience: context-based emotion recognition from a face and the situation around it.

Run a cross-validated Bayesian cue-integration study, build a retrieval index of past cases, prompt
vision-language models zero-shot, fine-tune LoRA experts and route them by expression salience, and train video
emotion recognisers; every method lands in the same metrics and report.

Convention: one YAML per run (a positional CONFIG), flags override it; `--set key=value` overrides any field.
`--quiet` and `--debug` work before or after the sub-command.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path
from typing import Any

from vlm_salience.errors import ConfigError, VlmSalienceError

EPILOG = """examples:
  vlm-salience demo --out runs/demo                        everything on generated data
  vlm-salience bci --data configs/data/affcog_utterances.yaml --out runs/affcog
  vlm-salience index build --data configs/data/golden_balls.yaml
  vlm-salience prompt run configs/experiment/prompt_synthetic.yaml
  accelerate launch -m vlm_salience.cli train configs/train/experts_synthetic.yaml
  vlm-salience <command> --help                             options and an example for each command
"""


def _version() -> str:
    from vlm_salience import __version__

    return __version__


def _common() -> argparse.ArgumentParser:
    """Options every sub-command accepts after its name too; SUPPRESS keeps a value given before it."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--quiet", action="store_true", default=argparse.SUPPRESS, help="no progress bars")
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                   help="show full Python tracebacks instead of one-line errors")
    return p


def _add_overrides(p: argparse.ArgumentParser, flag: str = "--set", what: str = "config",
                   example: str = "seed=1") -> None:
    p.add_argument(flag, dest=flag.lstrip("-").replace("-", "_"), action="append", default=[],
                   metavar="KEY=VALUE", help=f"override a {what} field, e.g. {example} (repeatable)")


def _parser(sub, name: str, *, help: str, example: str) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=help, description=help, parents=[_common()],
                          epilog=f"example:\n  {example}", formatter_class=argparse.RawDescriptionHelpFormatter)


def _json_flag(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--json", nargs="?", const="-", default=None, metavar="FILE",
                   help=f"also write {what} as JSON to FILE (to stdout with no FILE or '-')")


def _emit_json(target: str | None, payload: Any) -> None:
    import json

    from vlm_salience.atomic import write_text

    if target is None:
        return
    text = json.dumps(payload, indent=2, default=float)
    if hasattr(target, "write"):  # `--json -`: the real stdout, which main() keeps for the JSON alone
        print(text, file=target, flush=True)
    elif target == "-":
        print(text)
    else:
        write_text(target, text + "\n")


def check_out_dir(out: str | Path) -> Path:
    """--out is a folder: a file there, or a folder we cannot write, is the user's to fix before any work.

    An existing folder is fine: the files a command writes replace their namesakes atomically and anything
    else in it is left alone (documented in the README).
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: is a file, but the output is a folder of files (metrics.json, "
                          "report.md, ...). Fix: pass a folder path, e.g. runs/<name>.")
    parent = out if out.exists() else next((p for p in out.parents if p.exists()), Path("."))
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"--out {out}: {parent} is not writable. Fix: pass a folder you can write to.")
    return out


def _run_yaml(path: str | Path, model: Any, overrides: list[str], keys: tuple[str, ...]) -> tuple[Any, dict]:
    """Load a run YAML: the config itself plus run-level keys (data, out) that flags may override."""
    from vlm_salience.config import FromCommandLine, apply_overrides, read_yaml, validate

    path = Path(path)
    data = apply_overrides(read_yaml(path), overrides)
    run = {}
    for k in keys:
        if k in data:
            value = data.pop(k)
            base = Path.cwd() if isinstance(value, FromCommandLine) else path.resolve().parent  # the path rule
            run[k] = str((base / value).resolve()) if value is not None else None
    return validate(data, model, source=path, base_dir=path.resolve().parent), run


def _config_command(sub, name: str, func, config_help: str, *, help: str, example: str) -> argparse.ArgumentParser:
    """A subcommand that runs one config YAML: the config, --out and --set overrides."""
    p = _parser(sub, name, help=help, example=example)
    p.add_argument("config", help=config_help)
    p.add_argument("--out", help="output folder (overrides the YAML's `out`)")
    _add_overrides(p, example="optim.lr=1e-4")
    p.set_defaults(func=func)
    return p


def _with_out(args: argparse.Namespace) -> list[str]:
    sets = list(args.set)
    if getattr(args, "out", None):
        check_out_dir(args.out)
        sets.append(f"out={Path(args.out).resolve()}")
    return sets


def cmd_data_synth(args: argparse.Namespace) -> int:
    from vlm_salience.config import load_config
    from vlm_salience.data.synth import SynthConfig, write_corpus
    from vlm_salience.resources import shipped

    cfg = load_config(args.config or args.config_opt or shipped("configs/synth/split_steal.yaml"), SynthConfig,
                      args.set)
    path = write_corpus(cfg, check_out_dir(args.out), progress=not args.quiet)
    print(f"wrote the synthetic Split-Steal corpus to {args.out} ({cfg.participants} participants x "
          f"{cfg.rounds} rounds); its data config: {path}")
    return 0


def cmd_data_check(args: argparse.Namespace) -> int:
    from vlm_salience.data import load_corpus
    from vlm_salience.data.video import is_video_data_config

    if is_video_data_config(args.data):
        from vlm_salience.data.video.check import check_video_data

        summary = check_video_data(args.data, drop_invalid=args.drop_invalid, overrides=args.data_set,
                                   decode=args.decode, progress=not args.quiet)
        lines = summary.pop("dropped_lines", [])
        _print_summary(summary)
        for line in lines:
            print("  " + line)
        _emit_json(args.json, summary | {"dropped_lines": lines})
        return 0

    corpus = load_corpus(args.data, drop_invalid=args.drop_invalid, overrides=args.data_set)
    print(f"{corpus.name}: {len(corpus.items)} items, {len(corpus.labels)} labels ({corpus.response}); "
          f"judgements: face-only {len(corpus.face_only)}, context-only {len(corpus.context_only)}, "
          f"combined {0 if corpus.combined is None else len(corpus.combined)}; fingerprint {corpus.fingerprint}")
    for line in corpus.dropped.lines():
        print("  " + line)
    return 0


def _print_summary(summary: dict[str, Any], indent: str = "") -> None:
    for k, v in summary.items():
        if isinstance(v, dict):
            print(f"{indent}{k}:")
            _print_summary(v, indent + "  ")
        else:
            print(f"{indent}{k}: {v}")


def cmd_video_synth(args: argparse.Namespace) -> int:
    from vlm_salience.config import load_config
    from vlm_salience.data.video.synth import ClipSynthConfig, write_clip_corpus
    from vlm_salience.resources import shipped

    cfg = load_config(args.config or shipped("configs/synth/clips.yaml"), ClipSynthConfig, args.set)
    path = write_clip_corpus(cfg, check_out_dir(args.out), progress=not args.quiet)
    print(f"wrote the synthetic clip corpus to {args.out}: generic layout {path}, DFEW-like layout "
          f"{Path(args.out) / 'dfew' / 'data.yaml'}, per-clip manifest {Path(args.out) / 'manifest.csv'}")
    return 0


def cmd_data_export(args: argparse.Namespace) -> int:
    from vlm_salience.config import load_config
    from vlm_salience.training.config import TrainConfig
    from vlm_salience.data.video import is_video_data_config
    from vlm_salience.training.export_data import export_instruction_data, export_video_corpus

    if is_video_data_config(args.config):  # a video corpus: its folds as ShareGPT video / datasets files
        summary = export_video_corpus(args.config, check_out_dir(args.out), fmt=args.format, overrides=args.set)
        print("\n".join(f"  {name}: {n} clips" for name, n in summary["files"].items()))
        print(f"wrote the clips of {summary['corpus']} to {args.out}")
        _emit_json(args.json, summary)
        return 0
    cfg = load_config(args.config, TrainConfig, args.set)
    summary = export_instruction_data(cfg, check_out_dir(args.out), fmt=args.format, adapters=args.adapter or None)
    for name, n in summary["files"].items():
        print(f"  {name}: {n} examples")
    print(f"wrote the instruction data of {cfg.name} to {args.out}")
    _emit_json(args.json, summary)
    return 0


def cmd_bci(args: argparse.Namespace) -> int:
    from vlm_salience.data import load_corpus
    from vlm_salience.report import print_table, write_outputs
    from vlm_salience.resources import shipped
    from vlm_salience.study import StudyConfig, quick_config, run_study

    if args.jobs == 0:
        raise ConfigError("bci --jobs 0: pass -1 (all cores, the default), a number of processes, or 1 (serial).")
    if args.config and args.config_opt and args.config != args.config_opt:
        raise ConfigError(f"two study configs given ({args.config} and --config {args.config_opt}). Fix: pass one.")
    cfg, run = _run_yaml(args.config or args.config_opt or shipped("configs/experiment/bci.yaml"), StudyConfig,
                         args.set, ("data", "out"))
    if args.cue:  # the machine cue beside the human one: two studies and their side-by-side comparison
        return _bci_cue(args, cfg, run)
    data, out = args.data or run.get("data"), args.out or run.get("out")
    if not data or not out:
        raise ConfigError("bci needs a data config and an output folder: pass --data and --out, or put "
                          "`data:` and `out:` in the study YAML.")
    check_out_dir(out)
    corpus = load_corpus(data, drop_invalid=args.drop_invalid, overrides=args.data_set)
    if corpus.dropped.total:
        print(f"--drop-invalid: skipped {corpus.dropped.total} row(s):")
        for line in corpus.dropped.lines():
            print("  " + line)
    if args.jobs is not None:
        cfg = cfg.model_copy(update={"n_jobs": args.jobs})
    if args.quick:
        cfg = quick_config(cfg)
    result = run_study(corpus, cfg, progress=not args.quiet)
    out = write_outputs(result, out)
    print_table(result)
    print(f"wrote {out}/metrics.json, predictions.csv, report.md and plots")
    return 0


def _bci_cue(args: argparse.Namespace, cfg: Any, run: dict) -> int:
    """`bci --cue`: every flag of a plain study honoured. --data (else the study YAML's `data:`) replaces the cue
    YAML's corpus; --data-set and --drop-invalid load it; --out (else the study YAML's `out:`); --jobs, --quick."""
    from vlm_salience.machine_cues import machine_cue_study

    out = args.out or run.get("out")
    if not out:
        raise ConfigError("bci --cue needs an output folder (for human/, machine/ and side_by_side.md): pass --out, "
                          "or put `out:` in the study YAML.")
    if getattr(args, "jobs", None) is not None:
        cfg = cfg.model_copy(update={"n_jobs": args.jobs})
    if getattr(args, "quick", False):
        from vlm_salience.study import quick_config

        cfg = quick_config(cfg)
    doc = machine_cue_study(args.cue, cfg, check_out_dir(out), progress=not args.quiet,
                            data=args.data or run.get("data"), data_overrides=args.data_set,
                            drop_invalid=args.drop_invalid)
    print((Path(out) / "side_by_side.md").read_text())
    _emit_json(args.json, doc)
    return 0


def cmd_index_build(args: argparse.Namespace) -> int:
    from vlm_salience.data import load_corpus
    from vlm_salience.resources import shipped
    from vlm_salience.retrieval.build import build_corpus_index
    from vlm_salience.retrieval.index import IndexConfig, check_index_out

    cfg, run = _run_yaml(args.config or args.config_opt or shipped("configs/retrieval/default.yaml"), IndexConfig,
                         args.set, ("data", "out"))
    data = args.data or run.get("data")
    if not data:
        raise ConfigError("index build needs a data config: pass --data or put `data:` in the retrieval YAML.")
    corpus = load_corpus(data, drop_invalid=args.drop_invalid, overrides=args.data_set)
    out = Path(args.out or run.get("out") or Path("retrieval_index") / corpus.name)
    check_out_dir(out)
    check_index_out(out)  # before the build: the folder is replaced as a whole
    index = build_corpus_index(corpus, cfg, data_config=data, progress=not args.quiet)
    index.save(out)
    spec = index.manifest["index"]
    print(f"indexed {len(index)} cases of {corpus.name} into {out} ({spec['type']}, "
          f"{index.manifest['embedding']['text_model']}, dim {index.manifest['embedding']['dim']}, "
          f"{index.manifest['build_seconds']:.1f} s)")
    return 0


def cmd_index_query(args: argparse.Namespace) -> int:
    from vlm_salience.retrieval.index import CaseIndex

    index = CaseIndex.load(args.index)
    exclude = {}
    for item in args.exclude:
        key, _, value = item.partition("=")
        exclude.setdefault(key, []).append(value)
    hits = index.search(args.text, k=args.k, exclude=exclude or None)[0]
    if args.json is not None:
        _emit_json(args.json, [{"rank": h.rank, "id": h.id, "score": h.score, "text": h.text,
                                "payload": h.payload} for h in hits])
        if args.json == "-" or hasattr(args.json, "write"):  # stdout is the JSON's
            return 0
    for h in hits:
        obs = h.payload.get("observed") or {}
        extra = f"  valence {obs['valence']:.2f}" if obs.get("valence") is not None else ""
        print(f"{h.rank:>2}. {h.score:.3f}  {h.id}{extra}\n    {h.text}")
    return 0


def cmd_index_info(args: argparse.Namespace) -> int:
    import json

    from vlm_salience.retrieval.index import CaseIndex

    print(json.dumps(CaseIndex.load(args.index).info(), indent=2))
    return 0


def cmd_prompt_run(args: argparse.Namespace) -> int:
    from vlm_salience.config import load_config
    from vlm_salience.prompting.experiment import ExperimentConfig, run_experiment
    from vlm_salience.prompting.video_experiment import is_video_experiment
    from vlm_salience.report import print_experiment_table, write_experiment_outputs

    if is_video_experiment(args.config, _with_out(args)):  # a video data YAML: label scoring over its classes
        return cmd_prompt_run_video(args)
    cfg = load_config(args.config, ExperimentConfig, _with_out(args))
    result = run_experiment(cfg, progress=not args.quiet)
    out = write_experiment_outputs(result, cfg.out)
    print_experiment_table(result)
    print(f"wrote {out}/metrics.json, predictions.csv, report.md and plots (answers cached in "
          f"{cfg.cache or Path(cfg.out) / 'cache.sqlite'})")
    return 0


def cmd_prompt_run_video(args: argparse.Namespace) -> int:
    from vlm_salience.config import load_config
    from vlm_salience.prompting.video_experiment import VideoPromptConfig, run_video_prompting

    cfg = load_config(args.config, VideoPromptConfig, _with_out(args))
    doc = run_video_prompting(cfg, progress=not args.quiet)
    def ci(v: dict[str, Any]) -> str:
        return f"{v['value']:.3f} [{v['ci95'][0]:.3f}, {v['ci95'][1]:.3f}]"
    for name, r in doc["runs"].items():
        print(f"{name}: UAR {ci(r['uar'])}, WAR {ci(r['war'])} on {r['n']} test clips -> {r['out']}")
        for note in r["notes"]:
            print(f"  - {note}")
    print("compare with video models on the same clips: vlm-salience video compare RUN_FOLDER...")
    _emit_json(getattr(args, "json", None), doc)
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
    _emit_json(args.json, doc)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from vlm_salience.config import load_config
    from vlm_salience.training.config import TrainConfig
    from vlm_salience.training.loop import train_all

    cfg = load_config(args.config, TrainConfig, _with_out(args))
    results = train_all(cfg, resume=args.resume, progress=not args.quiet, only=args.adapter or None)
    if not all(r.get("main_process", True) for r in results.values()):
        return 0  # under `accelerate launch`, the main process reports
    for name, r in results.items():
        if "stopped_at" in r:
            print(f"{name}: stopped at step {r['stopped_at']} (SIGTERM); checkpoint {r['checkpoint']}; "
                  "continue with --resume")
            return 0
        ev = r.get("final_eval") or {}
        print(f"{name}: {r['steps']} steps, {r['tokens_per_s']:.0f} tokens/s, validation valence r "
              f"{ev.get('eval/valence_r', float('nan')):.3f}, KLD {ev.get('eval/kld', float('nan')):.3f} -> "
              f"{Path(cfg.out) / 'adapters' / name}")
    _emit_json(args.json, results)
    return 0


def cmd_route(args: argparse.Namespace) -> int:
    from vlm_salience.config import load_config
    from vlm_salience.report import print_experiment_table, write_experiment_outputs
    from vlm_salience.training.config import TrainConfig
    from vlm_salience.training.routing import route

    from vlm_salience.training.clip_routing import is_clip_routing, run_clip_routing_command

    if is_clip_routing(args.config, _with_out(args)):  # a video data YAML: experts routed on clips
        return run_clip_routing_command(args.config, _with_out(args), quiet=args.quiet)
    cfg = load_config(args.config, TrainConfig, _with_out(args))
    result = route(cfg, progress=not args.quiet)
    out = write_experiment_outputs(result, Path(cfg.out) / "routing")
    print_experiment_table(result)
    print(f"wrote {out}/metrics.json, predictions.csv, report.md and plots")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from vlm_salience.training.routing import export_merged

    out = export_merged(args.adapter, check_out_dir(args.out), base=args.base)
    print(f"merged {args.adapter} into its base: {out} (load it like any checkpoint)")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from vlm_salience.demo import run_demo

    return run_demo(check_out_dir(args.out), quick=args.quick, progress=not args.quiet)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vlm-salience", description=__doc__, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    parser.add_argument("--debug", action="store_true", help="show full Python tracebacks instead of one-line errors")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = sub.add_parser("data", help="corpora: generate the synthetic one, check a data config")
    dsub = data.add_subparsers(dest="data_command", required=True, metavar="COMMAND")
    synth = _parser(dsub, "synth", help="write the synthetic Split-Steal corpus (manifest format)",
                    example="vlm-salience data synth --out runs/synth --set participants=20")
    synth.add_argument("config", nargs="?", help="synth YAML (default: configs/synth/split_steal.yaml)")
    synth.add_argument("--config", dest="config_opt", help=argparse.SUPPRESS)  # the older form
    synth.add_argument("--out", required=True, help="folder for the corpus (images, CSVs and its data.yaml)")
    _add_overrides(synth, example="participants=20")
    synth.set_defaults(func=cmd_data_synth)
    check = _parser(dsub, "check", help="load a data config and summarise (or report) its rows",
                    example="vlm-salience data check --data configs/data/affcog_utterances.yaml")
    check.add_argument("--data", required=True, help="data config YAML (configs/data/...)")
    check.add_argument("--drop-invalid", action="store_true",
                       help="skip invalid rows and list them, instead of stopping at the first")
    check.add_argument("--decode", action="store_true", help="video corpora: also open every clip (slow)")
    _json_flag(check, "the summary (video corpora)")
    _add_overrides(check, "--data-set", "data config", "root=/my/data")
    check.set_defaults(func=cmd_data_check)
    exp = _parser(dsub, "export", help="export a training config's instruction data (datasets folder, "
                  "LLaMA-Factory ShareGPT JSON with images)",
                  example="vlm-salience data export configs/train/experts_synthetic.yaml --out runs/sft_data")
    exp.add_argument("config", help="training YAML (configs/train/...): its corpus, splits, adapters and prompts; "
                     "or a video data YAML: its folds' clips in LLaMA-Factory's ShareGPT video format")
    exp.add_argument("--out", required=True, help="folder for hf/<adapter>/<split>/ and sharegpt/*.json")
    exp.add_argument("--format", choices=["hf", "sharegpt", "both"], default="both",
                     help="hf: datasets.save_to_disk folders; sharegpt: LLaMA-Factory JSON (default both)")
    exp.add_argument("--adapter", action="append", default=[], help="only this adapter's data (repeatable)")
    _add_overrides(exp, example="data.rationale=true")
    _json_flag(exp, "the export summary")
    exp.set_defaults(func=cmd_data_export)

    video = sub.add_parser("video", help="video emotion recognition: synthetic clips, prepare, train, eval")
    vsub = video.add_subparsers(dest="video_command", required=True, metavar="COMMAND")
    vs = _parser(vsub, "synth", help="write the synthetic clip corpus (generic and DFEW-like layouts)",
                 example="vlm-salience video synth --out runs/clips --config configs/synth/clips_no_law.yaml")
    vs.add_argument("--out", required=True, help="folder for the clips, their CSVs, data YAMLs and manifest")
    vs.add_argument("--config", help="clip synth YAML (default: configs/synth/clips.yaml)")
    _add_overrides(vs, example="clips=70")
    vs.set_defaults(func=cmd_video_synth)
    _add_video_commands(vsub)

    face = sub.add_parser("face", help="real face models: detect faces and score their expressions")
    fsub = face.add_subparsers(dest="face_command", required=True, metavar="COMMAND")
    fs = _parser(fsub, "score", help="one CSV row per image: the largest face's box, class probabilities and "
                 "expressivity (resumable)",
                 example="vlm-salience face score photos/ --out runs/faces.csv --model "
                         "configs/models/face_fer_torch.yaml")
    fs.add_argument("images", nargs="+", metavar="IMAGE_OR_DIR", help="image files, or folders searched for images")
    fs.add_argument("--out", required=True, help="the CSV to write (rows already there are kept and skipped)")
    fs.add_argument("--model", help="expression classifier YAML (default: configs/models/face_fer_torch.yaml)")
    fs.add_argument("--detector", help="face detector YAML (default: configs/models/face_haar.yaml)")
    fs.add_argument("--expressivity", default="not_neutral",
                    choices=["not_neutral", "js_from_neutral", "kl_from_neutral"],
                    help="expressivity from the probabilities: 1 - P(neutral), or the JS / KL divergence from the "
                         "neutral profile (default not_neutral)")
    fs.add_argument("--fresh", action="store_true", help="start over instead of resuming the CSV")
    fs.add_argument("--strict", action="store_true", help="stop at the first unreadable image (after saving)")
    _json_flag(fs, "the summary")
    fs.set_defaults(func=cmd_face_score)

    b = _parser(sub, "bci", help="cross-validated cue-integration study (BCI, salience variants, control)",
                example="vlm-salience bci --data configs/data/affcog_utterances.yaml --out runs/affcog")
    b.add_argument("config", nargs="?", help="study YAML (default: configs/experiment/bci.yaml); may hold "
                   "`data:` and `out:`")
    b.add_argument("--config", dest="config_opt", help="the study YAML, as an option (older form)")
    b.add_argument("--data", help="data config YAML (configs/data/...); overrides the study YAML's `data`")
    b.add_argument("--out", help="output folder; overrides the study YAML's `out`. Files already there that the "
                   "study does not write are kept")
    b.add_argument("--drop-invalid", action="store_true", help="skip invalid rows and report them, not fail")
    b.add_argument("--cue", metavar="CUE.yaml", help="also run the study with a machine face cue "
                   "(configs/cues/*.yaml: a model reads the face or utterance instead of the human face-only "
                   "raters) and compare the two side by side")
    b.add_argument("--jobs", type=int, metavar="N", help="processes for the independent refits (folds, bootstrap "
                   "draws, no-law corpora): -1 all cores (default: the study YAML's n_jobs, -1), 1 serial; the "
                   "numbers are the same for any N")
    b.add_argument("--quick", action="store_true", help="a preview for iteration: at most 200 bootstrap "
                   "resamples, 20 weight refits and 1 no-law corpus (same point estimates, rough intervals; said "
                   "in the report's first line and in metrics.json)")
    _json_flag(b, "the --cue comparison")
    _add_overrides(b, example="cv.k=10")
    _add_overrides(b, "--data-set", "data config", "root=/my/data")
    b.set_defaults(func=cmd_bci)

    idx = sub.add_parser("index", help="retrieval index of past cases (build, query, info)")
    isub = idx.add_subparsers(dest="index_command", required=True, metavar="COMMAND")
    ib = _parser(isub, "build", help="embed a corpus's cases and build a FAISS index",
                 example="vlm-salience index build --data configs/data/golden_balls.yaml --out retrieval_index/gb")
    ib.add_argument("config", nargs="?", help="retrieval YAML (default: configs/retrieval/default.yaml); may "
                    "hold `data:` and `out:`")
    ib.add_argument("--config", dest="config_opt", help="the retrieval YAML, as an option (older form)")
    ib.add_argument("--data", help="data config YAML; overrides the retrieval YAML's `data`")
    ib.add_argument("--out", help="index folder (default: retrieval_index/<corpus name>); replaced as a whole, so a "
                    "non-empty folder that is not an index is refused")
    ib.add_argument("--drop-invalid", action="store_true", help="skip invalid rows and report them, not fail")
    _add_overrides(ib, example="index.type=flat")
    _add_overrides(ib, "--data-set", "data config", "root=/my/data")
    ib.set_defaults(func=cmd_index_build)
    iq = _parser(isub, "query", help="the k most similar cases to a text",
                 example='vlm-salience index query retrieval_index/gb "both players chose to steal" -k 3')
    iq.add_argument("index", help="index folder")
    iq.add_argument("text", help="the query, written like a case (situation, and the face where known)")
    iq.add_argument("-k", type=int, default=5, help="how many cases to return (default 5)")
    iq.add_argument("--exclude", action="append", default=[], metavar="KEY=VALUE",
                    help="leave out cases with this guard key, e.g. participant=p001 (repeatable)")
    _json_flag(iq, "the hits")
    iq.set_defaults(func=cmd_index_query)
    ii = _parser(isub, "info", help="print an index's manifest", example="vlm-salience index info retrieval_index/gb")
    ii.add_argument("index", help="index folder")
    ii.set_defaults(func=cmd_index_info)

    pr = sub.add_parser("prompt", help="zero-shot VLM prompting experiments")
    psub = pr.add_subparsers(dest="prompt_command", required=True, metavar="COMMAND")
    _config_command(psub, "run", cmd_prompt_run, "configs/experiment/<name>.yaml",
                    help="run a grid of models x strategies from an experiment YAML (resumable)",
                    example="vlm-salience prompt run configs/experiment/prompt_synthetic.yaml --out runs/prompt")

    tr = _config_command(sub, "train", cmd_train, "configs/train/<name>.yaml",
                         help="LoRA/QLoRA fine-tuning (works under `accelerate launch`)",
                         example="accelerate launch --config_file configs/accelerate/gpu.yaml -m vlm_salience.cli "
                                 "train configs/train/experts_synthetic.yaml")
    tr.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
    tr.add_argument("--adapter", action="append", default=[], help="train only this adapter (repeatable)")
    _json_flag(tr, "the training results")
    _config_command(sub, "route", cmd_route, "the training YAML whose adapters are routed, or a clip-routing YAML "
                    "(data: a video data YAML)",
                    help="evaluate face/context experts routed by salience beside single adapters (items or clips)",
                    example="vlm-salience route configs/train/experts_synthetic.yaml")
    ex = _parser(sub, "export", help="merge an adapter into its base model for serving",
                 example="vlm-salience export runs/train/experts/adapters/combined --out runs/merged")
    ex.add_argument("adapter", help="an adapter folder (runs/train/<name>/adapters/<adapter>)")
    ex.add_argument("--out", required=True, help="folder for the merged model (a checkpoint like any other)")
    ex.add_argument("--base", help="the base model (default: the one the adapter names)")
    ex.set_defaults(func=cmd_export)

    demo = _parser(sub, "demo", help="synthesise a corpus and run everything on it",
                   example="vlm-salience demo --out runs/demo --quick")
    demo.add_argument("--out", default="runs/demo", help="folder for every demo output (default runs/demo)")
    demo.add_argument("--quick", action="store_true", help="every step with fewer training steps and resamples (what `make demo` runs)")
    demo.set_defaults(func=cmd_demo)
    return parser


def _print_video_report(doc: dict[str, Any], out: str | Path) -> None:
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
                             data_overrides=args.data_set)
    invalid = summary.get("invalid") or []
    print(f"prepared {summary.get('prepared')} clip(s), {summary.get('skipped')} already cached, "
          f"{len(invalid)} invalid; face detection missed {summary.get('missed_detection_frames')} of "
          f"{summary.get('detection_frames')} frames -> {out}")
    for bad in invalid:
        print(f"  skipped {bad.get('clip_id')}: {bad.get('error')}")
    _emit_json(args.json, summary)
    return 0


def _print_variants(doc: dict[str, Any], out: str | Path) -> None:
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


def _video_overrides(args: argparse.Namespace) -> list[str]:
    """--set and --out of a video YAML, with --data-set appended to its data.overrides (the one syntax every
    command that reads a data config takes)."""
    import json

    from vlm_salience.config import apply_overrides, read_yaml

    sets = _with_out(args)
    if getattr(args, "data_set", None):
        data = apply_overrides(read_yaml(args.config), list(args.set)).get("data") or {}
        current = list(data.get("overrides") or []) if isinstance(data, dict) else []
        sets.append("data.overrides=" + json.dumps(current + list(args.data_set)))
    return sets


def cmd_video_train(args: argparse.Namespace) -> int:
    from vlm_salience.video.config import load_video_config
    from vlm_salience.video.train import train_video
    from vlm_salience.video.variants import has_variants, train_variants

    overrides = _video_overrides(args)
    if has_variants(args.config, overrides):  # a list of model variants (ablations) compared side by side
        doc = train_variants(args.config, overrides, resume=args.resume, progress=not args.quiet)
        if doc.get("stopped"):
            print(f"stopped (SIGTERM) in variant {doc.get('variant')}; continue with --resume")
            return 0
        _print_variants(doc, load_video_config(args.config, overrides)[0].out)
        _emit_json(args.json, doc)
        return 0
    result = train_video(args.config, overrides, resume=args.resume, progress=not args.quiet)
    if result.get("stopped"):
        print("stopped (SIGTERM) after a checkpoint; continue with --resume")
        return 0
    if result.get("report") is not None:
        _print_video_report(result["report"], result["report"].get("config", {}).get("out", ""))
    _emit_json(args.json, result.get("report"))
    return 0


def cmd_video_eval(args: argparse.Namespace) -> int:
    from vlm_salience.video.config import load_video_config
    from vlm_salience.video.train import eval_video
    from vlm_salience.video.variants import eval_variants, has_variants

    overrides = _video_overrides(args)
    if has_variants(args.config, overrides):
        doc = eval_variants(args.config, overrides, progress=not args.quiet)
        _print_variants(doc, load_video_config(args.config, overrides)[0].out)
        _emit_json(args.json, doc)
        return 0
    doc = eval_video(args.config, overrides, progress=not args.quiet)
    _print_video_report(doc, doc.get("config", {}).get("out", ""))
    _emit_json(args.json, doc)
    return 0


def cmd_face_score(args: argparse.Namespace) -> int:
    from vlm_salience.face_scoring import main_summary_text, score_faces

    out = Path(args.out)
    if out.is_dir():
        raise ConfigError(f"--out {out}: is a folder; face score writes one CSV. Fix: pass a file path, e.g. "
                          f"{out / 'scores.csv'}.")
    summary = score_faces(args.images, out, model_cfg=args.model, detector_cfg=args.detector,
                          progress=not args.quiet, resume=not args.fresh, expressivity=args.expressivity,
                          strict=args.strict)
    print(main_summary_text(summary))
    _emit_json(args.json, summary)
    return 0


def cmd_video_describe(args: argparse.Namespace) -> int:
    from vlm_salience.grace.text import describe_video

    summary = describe_video(args.config, _with_out(args), progress=not args.quiet)
    _print_summary({k: v for k, v in summary.items() if not isinstance(v, (list, dict))})
    _emit_json(args.json, summary)
    return 0


def _add_video_commands(vsub) -> None:
    vp = _parser(vsub, "prepare", help="detect, track and crop the face and scene streams of every clip into a "
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
    _add_overrides(vp, example="streams.face_size=112")
    _add_overrides(vp, "--data-set", "data config", "root=/data/DFEW")
    _json_flag(vp, "the prepare summary")
    vp.set_defaults(func=cmd_video_prepare)
    vt = _config_command(vsub, "train", cmd_video_train, "configs/video/<name>.yaml",
                         help="train a video emotion recogniser on every fold and report UAR/WAR (works under "
                              "`accelerate launch`)",
                         example="vlm-salience video train configs/video/baseline_synthetic.yaml")
    vt.add_argument("--resume", action="store_true", help="continue from the newest checkpoint of each fold")
    _add_overrides(vt, "--data-set", "data config", "root=/data/DFEW")
    _json_flag(vt, "the run's metrics")
    ve = _config_command(vsub, "eval", cmd_video_eval, "the video YAML that was trained",
                         help="predict every fold's test clips with the chosen weights and rewrite the report",
                         example="vlm-salience video eval configs/video/baseline_synthetic.yaml")
    _add_overrides(ve, "--data-set", "data config", "root=/data/DFEW")
    _json_flag(ve, "the run's metrics")
    vd = _config_command(vsub, "describe", cmd_video_describe, "a describe YAML (configs/grace/describe_*.yaml)",
                         help="GRACE's coarse-to-fine text: describe every clip with a VLM, refine it into facial "
                              "actions, intensity and time course (cached, resumable)",
                         example="vlm-salience video describe configs/grace/describe_synthetic.yaml")
    _json_flag(vd, "the summary")
    vc = _parser(vsub, "compare", help="one UAR/WAR table of finished runs on the same test clips (video models, "
                 "video prompt runs), with paired differences against a reference; refuses runs on other clips",
                 example="vlm-salience video compare runs/video_baseline_synthetic runs/prompt_video/tiny__zero_shot")
    vc.add_argument("runs", nargs="+", help="run folders with a predictions.csv (NAME=FOLDER to name a row)")
    vc.add_argument("--reference", help="the row the others are compared to (default: the first)")
    vc.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples (default 1000)")
    vc.add_argument("--out", help="also write comparison.json and comparison.md into this folder")
    _json_flag(vc, "the comparison")
    vc.set_defaults(func=cmd_video_compare)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "quiet", False):  # transformers/hub read this when first imported (inside the commands)
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        if getattr(args, "json", None) == "-":  # stdout carries the JSON alone: human lines go to stderr
            args.json = sys.stdout
            with contextlib.redirect_stdout(sys.stderr):
                return int(args.func(args) or 0)
        return int(args.func(args) or 0)
    except VlmSalienceError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the file system refused (permissions, a full disk, a file where a folder goes)
        if args.debug:
            raise
        print(f"error: {exc}. Fix: check that path and its permissions (--debug shows where it happened).",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
