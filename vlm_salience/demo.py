"""`vlm-salience demo`: everything on data the project generates itself, in one command."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console


def run_demo(out: Path, *, quick: bool = False, progress: bool = True) -> int:
    from vlm_salience.config import load_config
    from vlm_salience.data import load_corpus
    from vlm_salience.data.synth import SynthConfig, write_corpus
    from vlm_salience.report import print_table, write_outputs
    from vlm_salience.resources import shipped
    from vlm_salience.study import StudyConfig, run_study

    console = Console()
    console.rule("1. Synthetic Split-Steal corpus with a planted salience law")
    synth = load_config(shipped("configs/synth/split_steal.yaml"), SynthConfig)
    data_yaml = write_corpus(synth, out / "corpus", progress=progress)
    console.print(f"{synth.participants} participants x {synth.rounds} rounds, faces drawn with Pillow, "
                  f"raters in three conditions; manifest at {out / 'corpus'}")

    console.rule("2. Cue-integration study: BCI, salience variants and the control")
    overrides = ["bootstrap.n=500", "bootstrap.weights_n=50"] if quick else []
    cfg = load_config(shipped("configs/experiment/bci_synthetic.yaml"), StudyConfig, overrides)
    result = run_study(load_corpus(data_yaml), cfg, progress=progress)
    write_outputs(result, out / "bci")
    print_table(result)
    console.print(f"report: {out / 'bci' / 'report.md'} (plots beside it)")

    console.rule("3. Retrieval index of past cases (all-MiniLM-L6-v2 + FAISS)")
    from vlm_salience.retrieval.build import build_corpus_index
    from vlm_salience.retrieval.index import IndexConfig

    corpus = result.corpus
    index = build_corpus_index(corpus, load_config(shipped("configs/retrieval/default.yaml"), IndexConfig),
                               data_config=data_yaml, progress=progress)
    index.save(out / "index")
    spec = index.manifest["index"]
    console.print(f"indexed {len(index)} cases ({spec['type']} index, dim {index.manifest['embedding']['dim']}) "
                  f"into {out / 'index'}")
    from vlm_salience.retrieval.cases import cases_from_corpus

    probe = cases_from_corpus(corpus, result.expressivity)[0]
    guard = index.guard_for(probe)
    console.print(f"query: {probe.text}\nleakage guard: never the same {', '.join(guard)}")
    for hit in index.search(probe.text, k=3, exclude=guard)[0]:
        obs = hit.payload["observed"]
        top = max(obs["emotion_dist"], key=obs["emotion_dist"].get)
        console.print(f"  {hit.rank}. {hit.score:.3f} {hit.id}: observers chose {top} "
                      f"({obs['emotion_dist'][top]:.0%}), valence {obs['valence']:.2f}\n     {hit.text}")
    return 0
