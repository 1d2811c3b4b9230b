"""`vlm-salience demo`: everything on data the project generates itself, in one command."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from vlm_salience.formatting import fmt_metric


def run_demo(out: Path, *, quick: bool = False, progress: bool = True) -> int:
    from vlm_salience.config import load_config
    from vlm_salience.data import load_corpus
    from vlm_salience.data.synth import SynthConfig, write_corpus
    from vlm_salience.study_report import print_table, write_outputs
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
    from vlm_salience.prompting.report import print_experiment_table, write_experiment_outputs

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

    console.rule("5. LoRA fine-tuning: face and context experts, routed by salience")
    console.print("A small random Qwen2-VL (configs/models/small_qwen2_vl.yaml) gets three LoRA adapters: one on all "
                  "training items, a face expert on the expressive faces and a context expert on the subtle ones. "
                  "Routing sends each test item to an expert (hard), pools both by the salience law BCI fits (soft), "
                  "or lets a gate fitted on the validation split decide (learned).")
    from vlm_salience.training.config import TrainConfig
    from vlm_salience.training.loop import train_all
    from vlm_salience.training.routing import route

    train_path = shipped("configs/train/experts_synthetic.yaml")
    raw = read_yaml(train_path)
    raw["data"]["config"] = str(data_yaml.resolve())
    raw["out"] = str((out / "train").resolve())
    raw["model"]["path"] = str((out / "models" / "small-qwen2-vl").resolve())
    raw["tensorboard"] = False
    if quick:  # fewer updates; the random base still learns (the demo test asserts valence r >= 0.5)
        raw["optim"]["max_steps"] = QUICK_LORA_STEPS
    train_cfg = validate(raw, TrainConfig, source=train_path, base_dir=train_path.parent)
    for name, r in train_all(train_cfg, progress=progress).items():
        ev = r.get("final_eval") or {}
        console.print(f"  adapter {name}: {r['steps']} steps, {r['tokens_per_s']:.0f} tokens/s, validation valence r "
                      f"{ev.get('eval/valence_r', float('nan')):.3f}")
    routed = route(train_cfg, progress=progress)
    write_experiment_outputs(routed, out / "train" / "routing")
    print_experiment_table(routed)
    best = routed.extra["routing_vs_best_single"]["best_single"]
    console.print(f"report: {out / 'train' / 'routing' / 'report.md'} (routed mixtures are compared with the best "
                  f"single adapter, {best}, by a paired bootstrap there)")

    _faces_step(console, out, progress)
    _video_step(console, out, quick, progress)  # 7a baseline, 7b OUS, 7c GRACE, 7d the VLM on the clips
    _machine_cue_step(console, out, quick, progress)
    return 0


def _faces_step(console: Console, out: Path, progress: bool) -> None:
    from vlm_salience.face_scoring import demo_images, main_summary_text, score_faces
    from vlm_salience.models.faces.detector import auto_detector_config

    import pandas as pd

    detector = {"mtcnn": "MTCNN (five landmarks, aligned crops)", "haar": "OpenCV's Haar cascade"}[
        auto_detector_config().kind]
    console.rule(f"6. Real face models: {detector} and the FER2013 mini-Xception")
    folder = out / "faces"
    demo_images(folder / "images", drawn=4)
    summary = score_faces([folder / "images"], folder / "scores.csv", progress=progress)
    table = pd.read_csv(folder / "scores.csv")
    probs = [c for c in table.columns if c.startswith("p_")]
    for row in table.itertuples(index=False):
        name = Path(row.path).name
        if row.status != "ok":
            console.print(f"  {name}: {row.status}")
            continue
        top = max(probs, key=lambda c: getattr(row, c))
        console.print(f"  {name}: face at ({row.x}, {row.y}, {row.w}x{row.h}), read as {top[2:]} "
                      f"({getattr(row, top):.0%}), expressivity {row.expressivity:.2f}")
    console.print(f"{main_summary_text(summary)}. The drawn faces are cartoons, far from FER2013's photographs: how "
                  "the real classifier reads them measures the drawings as much as the model.")


# Video: 7a the face-only baseline, 7b OUS against its baseline, 7c GRACE against its no-text ablation, all on ONE
# synthetic clip corpus and ONE frame cache (`video/train.py`'s demo helpers). Step 8 is the machine cue.
VIDEO_FOLDS = ["set_1"]
# training steps per run: (baseline, OUS pair, GRACE pair); None keeps the YAML's (600, 250, 100)
QUICK_STEPS = (120, 60, 40)  # video: baseline, OUS, GRACE
QUICK_LORA_STEPS = 300  # of experts_synthetic.yaml's 500
QUICK_CLIP_LORA_STEPS = 60  # 7d: LoRA of the tiny VLM on the clips, of clips_synthetic.yaml's 200
FULL_STEPS = (None, None, None)


def _video_step(console: Console, out: Path, quick: bool, progress: bool) -> None:
    from vlm_salience.demo.video_steps import demo_grace_step, demo_ous_step, demo_step

    base_steps, ous_steps, grace_steps = QUICK_STEPS if quick else FULL_STEPS
    small = (" [bold]--quick: a few dozen steps per model, far too few for the tiny random encoders to learn; the "
             "figures exercise the pipeline, not the science (`make demo-full` trains longer).[/bold]" if quick else "")
    console.rule("7a. Video: synthetic clips and the face-only baseline (UAR/WAR)")
    console.print("Synthetic clips with a planted rigid-cognition law: in the happy/sad and surprise/fear pairs some "
                  "faces are ambiguous and the scene's polarity decides. The face-only baseline (DFER-CLIP recipe, a "
                  "tiny random CLIP) trains on fold set_1 here; all five folds: `vlm-salience video train "
                  "configs/video/baseline_synthetic.yaml`. The clips are prepared once into one frame cache that "
                  "the baseline, OUS and GRACE all read." + small)
    res = demo_step(out, folds=VIDEO_FOLDS, steps=base_steps, progress=progress)
    line = f"baseline: UAR {fmt_metric(res.get('uar'))}, WAR {fmt_metric(res.get('war'))}"
    if res.get("ambiguous"):
        a = res["ambiguous"]
        line += (f"; on the {a['n']} ambiguous clips WAR {fmt_metric(a['war'])} against the pair's chance "
                 f"{a['pair_chance']:.2f} (the face alone cannot tell the pair apart: the gap OUS must close)")
    console.print(line)
    console.print(f"report: {Path(res['out']) / 'report.md'}")

    console.rule("7b. Video: OUS (scene-guided) against a face-only baseline")
    console.print("OUS adds the scene stream, scene polarity, the Type Fusion Encoder and learnable prompts to the "
                  "face stream. The pair is configs/video/ous_synthetic.yaml's quick pair (variants baseline and "
                  "ous: the same frozen tiny CLIP, steps and seed, so the only difference is OUS's own parts); "
                  "all nine variants and five folds: `vlm-salience video train configs/video/ous_synthetic.yaml`."
                  + small)
    doc = demo_ous_step(out, folds=VIDEO_FOLDS, steps=ous_steps, progress=progress)
    if doc.get("stopped"):  # SIGTERM: checkpointed; the rerun resumes
        console.print(f"stopped while training {doc.get('variant')}: run the demo again to resume")
        return
    for name in ("baseline", "ous"):
        v = doc["variants"][name]
        console.print(f"  {name}: UAR {fmt_metric(v['all']['uar'])}, WAR {fmt_metric(v['all']['war'])}; "
                      f"ambiguous clips UAR {fmt_metric(v.get('ambiguous', {}).get('uar'))}, "
                      f"clear clips UAR {fmt_metric(v.get('clear', {}).get('uar'))}")
    p = doc["paired"]["ous"]
    console.print(f"  OUS - baseline (paired bootstrap): UAR {_diff(p['all']['uar'])}, WAR {_diff(p['all']['war'])}; "
                  f"on the ambiguous clips UAR {_diff(p.get('ambiguous', {}).get('uar'))}")
    console.print(_verdict("OUS", "the face-only baseline", p["all"]["uar"], quick) +
                  " This baseline keeps the tiny random tower frozen, so it sits near chance even on clear clips: "
                  "a gain here is what the scene adds, not a better face reader.")
    console.print(f"report: {Path(doc['out']) / 'report.md'}")

    console.rule("7c. Video: GRACE (text tokens aligned with motion-weighted face regions)")
    console.print("GRACE aligns each clip's fine-grained text (here the corpus's reference descriptions refined by "
                  "the lexicon rules: no VLM) with motion-weighted face patches by log-domain Sinkhorn. It is "
                  "compared with its no-text ablation (model.text.source=none: the same model on the face frames "
                  "alone). The reference descriptions are written from each clip's known facial actions, so they "
                  "carry much of the class: a lead of GRACE over no_text measures that text, not what a real VLM's "
                  "descriptions would give. Other ablations: `vlm-salience video train "
                  "configs/video/grace_synthetic.yaml --set model.motion.mode=off`." + small)
    g = demo_grace_step(out, folds=VIDEO_FOLDS, steps=grace_steps, progress=progress)
    for name, m in g["methods"].items():
        amb = m.get("ambiguous") or {}
        console.print(f"  {name}: UAR {fmt_metric(m['pooled']['uar'])}, WAR {fmt_metric(m['pooled']['war'])}; "
                      f"ambiguous clips UAR {fmt_metric(amb.get('uar'))}")
    d = g["grace_vs_no_text"]
    console.print(f"  GRACE - no_text (paired bootstrap): UAR {_diff(d['uar'])}, WAR {_diff(d['war'])}")
    console.print(_verdict("GRACE", "its no-text ablation", d["uar"], quick))
    console.print(f"report: {Path(g['out']) / 'report.md'}")
    _vlm_clips_step(console, out, quick, progress)


def _vlm_clips_step(console: Console, out: Path, quick: bool, progress: bool) -> None:
    from vlm_salience.demo.vlm_clips import demo_vlm_clips_step

    console.rule("7d. Video: the tiny VLM on the same clips, zero-shot and LoRA, in one table with the video models")
    console.print("The tiny random Qwen2-VL of step 4 reads each clip's cached face frames (the 4 segment middles "
                  "the video models read) as one native video input and scores the seven classes: zero-shot "
                  "(`prompt run` with a video data YAML), then with a LoRA adapter trained on fold set_1's training "
                  "clips (`train` with a video data YAML: validation carved from the training fold, the test fold "
                  "never trained on). FER pooling (the FER2013 classifier's per-frame probabilities, averaged: "
                  "nothing fitted) joins the table. `video compare` puts every run on the same test clips, each "
                  "against the face-only baseline by a paired bootstrap. The VLM is a random stand-in: its rows "
                  "exercise the pipeline, not a real VLM's accuracy."
                  + (f" [bold]--quick: {QUICK_CLIP_LORA_STEPS} LoRA steps.[/bold]" if quick else ""))
    res = demo_vlm_clips_step(out, model=out / "models" / "tiny-qwen2-vl", folds=VIDEO_FOLDS,
                              steps=QUICK_CLIP_LORA_STEPS if quick else None, n_boot=200 if quick else 1000,
                              progress=progress)
    if res.get("stopped"):
        console.print("stopped while training the LoRA adapter: run the demo again to resume")
        return
    console.print(res["table"], markup=False, highlight=False)
    console.print(f"table: {Path(res['out']) / 'comparison.md'} (`vlm-salience video compare` makes it from any "
                  "finished runs on the same test clips)")


def _machine_cue_step(console: Console, out: Path, quick: bool, progress: bool) -> None:
    console.rule("8. The machine face cue beside the human one: FER2013 mini-Xception on a synthetic rating corpus")
    from vlm_salience.demo.machine_cue import machine_cue_demo, summary_lines

    console.print("A synthetic Split-Steal corpus rated per emotion (1-9) with drawn faces: the study runs once with "
                  "the human face-only raters as the face cue and once with the real FER2013 classifier reading the "
                  "face images in their place.")
    res = machine_cue_demo(out / "machine_cue", quick=quick, progress=progress)
    for line in summary_lines(res):
        console.print(line)


def _diff(p: dict | None) -> str:
    if not p:
        return "n/a"
    return f"{p['diff']:+.3f} [{p['ci95'][0]:+.3f}, {p['ci95'][1]:+.3f}]"


def _verdict(a: str, b: str, p: dict, quick: bool) -> str:
    """What the paired interval on UAR shows, in words (no claim where it includes zero)."""
    lo, hi = p["ci95"]
    if p.get("a_better"):
        text = f"{a} beats {b} on UAR here: the paired 95% interval excludes zero."
    elif hi < 0:
        text = f"{a} is worse than {b} on UAR here: the paired 95% interval lies below zero."
    else:
        text = f"No significant UAR difference between {a} and {b} here: the paired 95% interval includes zero."
    return text + (" (--quick: too few steps to read anything into it.)" if quick else
                   " One fold of 28 test clips: intervals are wide.")
