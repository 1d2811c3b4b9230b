"""`vlm-salience index ...`: the retrieval index of past cases (build, query, info)."""

from __future__ import annotations

import argparse
from pathlib import Path

from vlm_salience.cli.common import add_overrides, check_out_dir, command, emit_json, json_flag, run_yaml
from vlm_salience.errors import ConfigError


def cmd_index_build(args: argparse.Namespace) -> int:
    from vlm_salience.data import load_corpus
    from vlm_salience.resources import shipped
    from vlm_salience.retrieval.build import build_corpus_index
    from vlm_salience.retrieval.index import IndexConfig, check_index_out

    cfg, run = run_yaml(args.config or args.config_opt or shipped("configs/retrieval/default.yaml"), IndexConfig,
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
        emit_json(args.json, [{"rank": h.rank, "id": h.id, "score": h.score, "text": h.text,
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


def add_commands(sub) -> None:
    idx = sub.add_parser("index", help="retrieval index of past cases (build, query, info)")
    isub = idx.add_subparsers(dest="index_command", required=True, metavar="COMMAND")
    ib = command(isub, "build", help="embed a corpus's cases and build a FAISS index",
                 example="vlm-salience index build --data configs/data/golden_balls.yaml --out retrieval_index/gb")
    ib.add_argument("config", nargs="?", help="retrieval YAML (default: configs/retrieval/default.yaml); may "
                    "hold `data:` and `out:`")
    ib.add_argument("--config", dest="config_opt", help="the retrieval YAML, as an option (older form)")
    ib.add_argument("--data", help="data config YAML; overrides the retrieval YAML's `data`")
    ib.add_argument("--out", help="index folder (default: retrieval_index/<corpus name>); replaced as a whole, so a "
                    "non-empty folder that is not an index is refused")
    ib.add_argument("--drop-invalid", action="store_true", help="skip invalid rows and report them, not fail")
    add_overrides(ib, example="index.type=flat")
    add_overrides(ib, "--data-set", "data config", "root=/my/data")
    ib.set_defaults(func=cmd_index_build)
    iq = command(isub, "query", help="the k most similar cases to a text",
                 example='vlm-salience index query retrieval_index/gb "both players chose to steal" -k 3')
    iq.add_argument("index", help="index folder")
    iq.add_argument("text", help="the query, written like a case (situation, and the face where known)")
    iq.add_argument("-k", type=int, default=5, help="how many cases to return (default 5)")
    iq.add_argument("--exclude", action="append", default=[], metavar="KEY=VALUE",
                    help="leave out cases with this guard key, e.g. participant=p001 (repeatable)")
    json_flag(iq, "the hits")
    iq.set_defaults(func=cmd_index_query)
    ii = command(isub, "info", help="print an index's manifest", example="vlm-salience index info retrieval_index/gb")
    ii.add_argument("index", help="index folder")
    ii.set_defaults(func=cmd_index_info)
