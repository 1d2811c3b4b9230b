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

    console.rule("4. Zero-shot VLM prompting grid (a tiny random Qwen2-VL as a stand-in)")
    console.print("[bold]The model here is a tiny randomly initialised Qwen2-VL built offline: it exercises "
                  "templates, image inputs, label scoring, generate-and-parse, caching and fusion, but its answers "
                  "are noise. Point `path` in configs/experiment/prompt_synthetic.yaml at a real VLM (hub id or "
                  "local checkpoint) for real numbers.[/bold]")
    from vlm_salience.config import read_yaml, validate
    from vlm_salience.prompting.experiment import ExperimentConfig, run_experiment
    from vlm_salience.report import print_experiment_table, write_experiment_outputs

    exp_path = shipped("configs/experiment/prompt_synthetic.yaml")
    raw = read_yaml(exp_path)
    raw.update(data=str(data_yaml.resolve()), out=str((out / "prompt").resolve()))
    raw["models"][0]["path"] = str((out / "models" / "tiny-qwen2-vl").resolve())
    if quick:
        raw["bootstrap"] = 200
    exp = validate(raw, ExperimentConfig, source=exp_path, base_dir=exp_path.parent)
    prompt_result = run_experiment(exp, progress=progress)
    write_experiment_outputs(prompt_result, exp.out)
    print_experiment_table(prompt_result)
    console.print(f"report: {exp.out / 'report.md'}; answers cached in {exp.out / 'cache.sqlite'} "
                  "(a second run resumes from it)")
    return 0
