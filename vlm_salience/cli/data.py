"""`vlm-salience data ...`: generate the synthetic corpus, check a data config, export instruction data."""

from __future__ import annotations

import argparse

from vlm_salience.cli.common import add_overrides, check_out_dir, command, emit_json, json_flag, print_summary


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
        print_summary(summary)
        for line in lines:
            print("  " + line)
        emit_json(args.json, summary | {"dropped_lines": lines})
        return 0

    corpus = load_corpus(args.data, drop_invalid=args.drop_invalid, overrides=args.data_set)
    print(f"{corpus.name}: {len(corpus.items)} items, {len(corpus.labels)} labels ({corpus.response}); "
          f"judgements: face-only {len(corpus.face_only)}, context-only {len(corpus.context_only)}, "
          f"combined {0 if corpus.combined is None else len(corpus.combined)}; fingerprint {corpus.fingerprint}")
    for line in corpus.dropped.lines():
        print("  " + line)
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
        emit_json(args.json, summary)
        return 0
    cfg = load_config(args.config, TrainConfig, args.set)
    summary = export_instruction_data(cfg, check_out_dir(args.out), fmt=args.format, adapters=args.adapter or None)
    for name, n in summary["files"].items():
        print(f"  {name}: {n} examples")
    print(f"wrote the instruction data of {cfg.name} to {args.out}")
    emit_json(args.json, summary)
    return 0


def add_commands(sub) -> None:
    data = sub.add_parser("data", help="corpora: generate the synthetic one, check a data config")
    dsub = data.add_subparsers(dest="data_command", required=True, metavar="COMMAND")
    synth = command(dsub, "synth", help="write the synthetic Split-Steal corpus (manifest format)",
                    example="vlm-salience data synth --out runs/synth --set participants=20")
    synth.add_argument("config", nargs="?", help="synth YAML (default: configs/synth/split_steal.yaml)")
    synth.add_argument("--config", dest="config_opt", help=argparse.SUPPRESS)  # the older form
    synth.add_argument("--out", required=True, help="folder for the corpus (images, CSVs and its data.yaml)")
    add_overrides(synth, example="participants=20")
    synth.set_defaults(func=cmd_data_synth)
    check = command(dsub, "check", help="load a data config and summarise (or report) its rows",
                    example="vlm-salience data check --data configs/data/affcog_utterances.yaml")
    check.add_argument("--data", required=True, help="data config YAML (configs/data/...)")
    check.add_argument("--drop-invalid", action="store_true",
                       help="skip invalid rows and list them, instead of stopping at the first")
    check.add_argument("--decode", action="store_true", help="video corpora: also open every clip (slow)")
    json_flag(check, "the summary (video corpora)")
    add_overrides(check, "--data-set", "data config", "root=/my/data")
    check.set_defaults(func=cmd_data_check)
    exp = command(dsub, "export", help="export a training config's instruction data (datasets folder, "
                  "LLaMA-Factory ShareGPT JSON with images)",
                  example="vlm-salience data export configs/train/experts_synthetic.yaml --out runs/sft_data")
    exp.add_argument("config", help="training YAML (configs/train/...): its corpus, splits, adapters and prompts; "
                     "or a video data YAML: its folds' clips in LLaMA-Factory's ShareGPT video format")
    exp.add_argument("--out", required=True, help="folder for hf/<adapter>/<split>/ and sharegpt/*.json")
    exp.add_argument("--format", choices=["hf", "sharegpt", "both"], default="both",
                     help="hf: datasets.save_to_disk folders; sharegpt: LLaMA-Factory JSON (default both)")
    exp.add_argument("--adapter", action="append", default=[], help="only this adapter's data (repeatable)")
    add_overrides(exp, example="data.rationale=true")
    json_flag(exp, "the export summary")
    exp.set_defaults(func=cmd_data_export)
