"""One entry point, `vlm-salience`, with sub-commands. Heavy imports happen inside each command."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from vlm_salience.errors import VlmSalienceError


def _add_overrides(p: argparse.ArgumentParser, flag: str = "--set", what: str = "config") -> None:
    p.add_argument(flag, dest=flag.lstrip("-").replace("-", "_"), action="append", default=[],
                   metavar="KEY=VALUE", help=f"override a {what} field, e.g. cv.k=10 (repeatable)")


def _config_command(sub, name: str, func, config_help: str, *, help: str) -> argparse.ArgumentParser:
    """A subcommand that runs one config YAML: the config, --quiet and --set overrides."""
    p = sub.add_parser(name, help=help)
    p.add_argument("config", help=config_help)
    p.add_argument("--quiet", action="store_true")
    _add_overrides(p)
    p.set_defaults(func=func)
    return p


def cmd_data_synth(args: argparse.Namespace) -> int:
    from vlm_salience.config import load_config
    from vlm_salience.data.synth import SynthConfig, write_corpus
    from vlm_salience.resources import shipped

    cfg = load_config(args.config or shipped("configs/synth/split_steal.yaml"), SynthConfig, args.set)
    path = write_corpus(cfg, args.out, progress=not args.quiet)
    print(f"wrote the synthetic Split-Steal corpus to {args.out} ({cfg.participants} participants x "
          f"{cfg.rounds} rounds); its data config: {path}")
    return 0


def cmd_data_check(args: argparse.Namespace) -> int:
    from vlm_salience.data import load_corpus

    corpus = load_corpus(args.data, drop_invalid=args.drop_invalid, overrides=args.data_set)
    print(f"{corpus.name}: {len(corpus.items)} items, {len(corpus.labels)} labels ({corpus.response}); "
          f"judgements: face-only {len(corpus.face_only)}, context-only {len(corpus.context_only)}, "
          f"combined {0 if corpus.combined is None else len(corpus.combined)}; fingerprint {corpus.fingerprint}")
    for line in corpus.dropped.lines():
        print("  " + line)
    return 0


def cmd_bci(args: argparse.Namespace) -> int:
    from vlm_salience.config import load_config
    from vlm_salience.data import load_corpus
    from vlm_salience.report import print_table, write_outputs
    from vlm_salience.resources import shipped
    from vlm_salience.study import StudyConfig, run_study

    cfg = load_config(args.config or shipped("configs/experiment/bci.yaml"), StudyConfig, args.set)
    corpus = load_corpus(args.data, drop_invalid=args.drop_invalid, overrides=args.data_set)
    if corpus.dropped.total:
        print(f"--drop-invalid: skipped {corpus.dropped.total} row(s):")
        for line in corpus.dropped.lines():
            print("  " + line)
    result = run_study(corpus, cfg, progress=not args.quiet)
    out = write_outputs(result, args.out)
    print_table(result)
    print(f"wrote {out}/metrics.json, predictions.csv, report.md and plots")
    return 0


def cmd_index_build(args: argparse.Namespace) -> int:
    from vlm_salience.config import load_config
    from vlm_salience.data import load_corpus
    from vlm_salience.resources import shipped
    from vlm_salience.retrieval.build import build_corpus_index
    from vlm_salience.retrieval.index import IndexConfig

    cfg = load_config(args.config or shipped("configs/retrieval/default.yaml"), IndexConfig, args.set)
    corpus = load_corpus(args.data, drop_invalid=args.drop_invalid, overrides=args.data_set)
    out = Path(args.out) if args.out else Path("retrieval_index") / corpus.name
    index = build_corpus_index(corpus, cfg, data_config=args.data, progress=not args.quiet)
    index.save(out)
    spec = index.manifest["index"]
    print(f"indexed {len(index)} cases of {corpus.name} into {out} ({spec['type']}, "
          f"{index.manifest['embedding']['text_model']}, dim {index.manifest['embedding']['dim']}, "
          f"{index.manifest['build_seconds']:.1f} s)")
    return 0


def cmd_index_query(args: argparse.Namespace) -> int:
    import json

    from vlm_salience.retrieval.index import CaseIndex

    index = CaseIndex.load(args.index)
    exclude = {}
    for item in args.exclude:
        key, _, value = item.partition("=")
        exclude.setdefault(key, []).append(value)
    hits = index.search(args.text, k=args.k, exclude=exclude or None)[0]
    if args.json:
        print(json.dumps([{"rank": h.rank, "id": h.id, "score": h.score, "text": h.text, "payload": h.payload}
                          for h in hits], indent=2))
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
    from vlm_salience.report import print_experiment_table, write_experiment_outputs

    cfg = load_config(args.config, ExperimentConfig, args.set)
    result = run_experiment(cfg, progress=not args.quiet)
    out = write_experiment_outputs(result, cfg.out)
    print_experiment_table(result)
    print(f"wrote {out}/metrics.json, predictions.csv, report.md and plots (answers cached in "
          f"{cfg.cache or Path(cfg.out) / 'cache.sqlite'})")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    import json

    from vlm_salience.config import load_config
    from vlm_salience.training.config import TrainConfig
    from vlm_salience.training.loop import train_all

    cfg = load_config(args.config, TrainConfig, args.set)
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
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=float))
    return 0


def cmd_route(args: argparse.Namespace) -> int:
    from vlm_salience.config import load_config
    from vlm_salience.report import print_experiment_table, write_experiment_outputs
    from vlm_salience.training.config import TrainConfig
    from vlm_salience.training.routing import route

    cfg = load_config(args.config, TrainConfig, args.set)
    result = route(cfg, progress=not args.quiet)
    out = write_experiment_outputs(result, Path(cfg.out) / "routing")
    print_experiment_table(result)
    print(f"wrote {out}/metrics.json, predictions.csv, report.md and plots")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from vlm_salience.training.routing import export_merged

    out = export_merged(args.adapter, args.out, base=args.base)
    print(f"merged {args.adapter} into its base: {out} (load it like any checkpoint)")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from vlm_salience.demo import run_demo

    return run_demo(Path(args.out), quick=args.quick, progress=not args.quiet)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vlm-salience", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="corpora: generate the synthetic one, check a data config")
    dsub = data.add_subparsers(dest="data_command", required=True)
    synth = dsub.add_parser("synth", help="write the synthetic Split-Steal corpus (manifest format)")
    synth.add_argument("--config", help="synth YAML (default: configs/synth/split_steal.yaml)")
    synth.add_argument("--out", required=True)
    synth.add_argument("--quiet", action="store_true")
    _add_overrides(synth)
    synth.set_defaults(func=cmd_data_synth)
    check = dsub.add_parser("check", help="load a data config and summarise (or report) its rows")
    check.add_argument("--data", required=True)
    check.add_argument("--drop-invalid", action="store_true")
    _add_overrides(check, "--data-set", "data config")
    check.set_defaults(func=cmd_data_check)

    b = sub.add_parser("bci", help="cross-validated cue-integration study (BCI, salience variants, control)")
    b.add_argument("--data", required=True, help="data config YAML (configs/data/...)")
    b.add_argument("--out", required=True, help="output folder")
    b.add_argument("--config", help="study YAML (default: configs/experiment/bci.yaml)")
    b.add_argument("--drop-invalid", action="store_true", help="skip invalid rows and report them, not fail")
    b.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_overrides(b)
    _add_overrides(b, "--data-set", "data config")
    b.set_defaults(func=cmd_bci)

    idx = sub.add_parser("index", help="retrieval index of past cases (build, query, info)")
    isub = idx.add_subparsers(dest="index_command", required=True)
    ib = isub.add_parser("build", help="embed a corpus's cases and build a FAISS index")
    ib.add_argument("--data", required=True, help="data config YAML")
    ib.add_argument("--out", help="index folder (default: retrieval_index/<corpus name>)")
    ib.add_argument("--config", help="retrieval YAML (default: configs/retrieval/default.yaml)")
    ib.add_argument("--drop-invalid", action="store_true")
    ib.add_argument("--quiet", action="store_true")
    _add_overrides(ib)
    _add_overrides(ib, "--data-set", "data config")
    ib.set_defaults(func=cmd_index_build)
    iq = isub.add_parser("query", help="the k most similar cases to a text")
    iq.add_argument("index", help="index folder")
    iq.add_argument("text")
    iq.add_argument("-k", type=int, default=5)
    iq.add_argument("--exclude", action="append", default=[], metavar="KEY=VALUE",
                    help="leave out cases with this guard key, e.g. participant=p001 (repeatable)")
    iq.add_argument("--json", action="store_true")
    iq.set_defaults(func=cmd_index_query)
    ii = isub.add_parser("info", help="print an index's manifest")
    ii.add_argument("index")
    ii.set_defaults(func=cmd_index_info)

    pr = sub.add_parser("prompt", help="zero-shot VLM prompting experiments")
    psub = pr.add_subparsers(dest="prompt_command", required=True)
    _config_command(psub, "run", cmd_prompt_run, "configs/experiment/<name>.yaml",
                    help="run a grid of models x strategies from an experiment YAML (resumable)")

    tr = _config_command(sub, "train", cmd_train, "configs/train/<name>.yaml",
                         help="LoRA/QLoRA fine-tuning (works under `accelerate launch`)")
    tr.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
    tr.add_argument("--adapter", action="append", default=[], help="train only this adapter (repeatable)")
    tr.add_argument("--json", help="also write the training results to this file")
    _config_command(sub, "route", cmd_route, "the training YAML whose adapters are routed",
                    help="evaluate face/context experts routed by salience beside single adapters")
    ex = sub.add_parser("export", help="merge an adapter into its base model for serving")
    ex.add_argument("adapter", help="an adapter folder (runs/train/<name>/adapters/<adapter>)")
    ex.add_argument("--out", required=True)
    ex.add_argument("--base", help="the base model (default: the one the adapter names)")
    ex.set_defaults(func=cmd_export)

    demo = sub.add_parser("demo", help="synthesise a corpus and run everything on it")
    demo.add_argument("--out", default="runs/demo")
    demo.add_argument("--quick", action="store_true", help="fewer bootstrap resamples")
    demo.add_argument("--quiet", action="store_true")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
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
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
