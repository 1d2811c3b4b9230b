"""`vlm-salience demo`, step 7d: the tiny VLM on the demo's clips, zero-shot and fine-tuned with LoRA, in ONE
comparison table with the video models (the face-only baseline, FER pooling, OUS and GRACE) on the same test clips.

Every part is the ordinary workflow on the demo's one clip corpus and one frame cache (`video_steps.py`), so the
VLM reads the very frames the video models read (the cache's segment middles at test time):
- FER pooling: `video train configs/video/fer_pooling_synthetic.yaml` (nothing is fitted: seconds);
- zero-shot: `prompt run configs/experiment/prompt_video_synthetic.yaml` (label scoring over the classes);
- LoRA: `train configs/train/clips_synthetic.yaml` (a video data YAML: training/clip_training.py; validation carved
  from the training fold, the test fold only predicted);
- the table: `video compare` (video/report.py's compare_runs), which refuses runs on other test clips.
The library never imports this module.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vlm_salience.demo.video_steps import DEMO_BASELINE, demo_clips, demo_overrides, fresh_if_settings_changed

DEMO_FER = "configs/video/fer_pooling_synthetic.yaml"
DEMO_PROMPT = "configs/experiment/prompt_video_synthetic.yaml"
DEMO_LORA = "configs/train/clips_synthetic.yaml"
REFERENCE = "baseline"


def demo_vlm_clips_step(root: str | Path, *, model: str | Path, folds: list[str], steps: int | None = None,
                        n_boot: int = 1000, progress: bool = True) -> dict[str, Any]:
    """FER pooling, the zero-shot and the LoRA VLM (`model`: the tiny Qwen2-VL folder, built there if missing) on
    the demo clips' `folds`, then one comparison of every demo run on those test clips (the video models' runs of
    steps 7a-7c must exist under `root`). `steps`: LoRA steps (None: the YAML's). Returns the comparison
    (compare_runs' document), its markdown table and the run folders."""
    from vlm_salience.config import load_config, read_yaml
    from vlm_salience.prompting.video_experiment import VideoPromptConfig, run_video_prompting
    from vlm_salience.resources import shipped
    from vlm_salience.training.clip_training import ClipTrainConfig, train_clips
    from vlm_salience.video.report import compare_runs, comparison_markdown
    from vlm_salience.video.train import train_video

    root = Path(root)
    data = demo_clips(root, progress=progress)
    cache = root / "clips_cache"
    frames = int(read_yaml(shipped(DEMO_BASELINE))["data"]["n_segments"])  # the frames the video models read
    fold_list = json.dumps(list(folds))
    build = shipped("configs/models/tiny_qwen2_vl.yaml")

    fer_out = root / "video_fer_pooling_synthetic"
    fer_sets = [*demo_overrides(root, folds=folds, progress=progress), "report.tsne=false", f"out={fer_out}"]
    fresh_if_settings_changed(fer_out, fer_sets)
    train_video(shipped(DEMO_FER), fer_sets, resume=True, progress=progress)

    vlm = root / "vlm_clips"
    entry = f"[{{backend: hf, name: tiny-qwen2-vl, path: '{Path(model).resolve()}', build: '{build}', " \
            "dtype: float32, batch_size: 8}]"
    prompt_cfg = load_config(shipped(DEMO_PROMPT), VideoPromptConfig, [
        f"data={data}", f"folds={fold_list}", f"frame_cache={cache}", f"clip.frames={frames}", f"models={entry}",
        f"report.n_boot={n_boot}", f"out={vlm / 'prompt'}"])
    zero = run_video_prompting(prompt_cfg, progress=progress)["runs"]["tiny-qwen2-vl__zero_shot"]

    lora_sets = [f"data.config={data}", f"data.frame_cache={cache}", f"data.folds={fold_list}",
                 f"data.clip.frames={frames}", f"model.path={Path(model).resolve()}", f"model.build={build}",
                 f"report.n_boot={n_boot}", f"out={vlm / 'train'}"]
    if steps is not None:
        lora_sets.append(f"optim.max_steps={int(steps)}")
    fresh_if_settings_changed(vlm / "train", lora_sets)  # a resumed adapter must have these settings
    lora_cfg = load_config(shipped(DEMO_LORA), ClipTrainConfig, lora_sets)
    summary = train_clips(lora_cfg, resume=True, progress=progress)
    if "stopped" in summary:  # SIGTERM: checkpointed; the rerun resumes
        return {"stopped": True}
    lora = summary["adapters"]["clips"]

    runs = {REFERENCE: root / "video_baseline_synthetic", "fer_pooling": fer_out,
            "ous_face_only": root / "video_ous_synthetic" / "variants" / "baseline",
            "ous": root / "video_ous_synthetic" / "variants" / "ous",
            "grace_no_text": root / "video_grace_synthetic" / "variants" / "no_text",
            "grace": root / "video_grace_synthetic" / "variants" / "grace",
            "vlm_zero_shot": Path(zero["out"]), "vlm_lora": Path(lora["out"])}
    doc = compare_runs({k: v for k, v in runs.items()}, reference=REFERENCE, n_boot=n_boot)
    table = comparison_markdown(doc)
    from vlm_salience.atomic import write_text

    write_text(vlm / "comparison.json", json.dumps(doc, indent=2))
    write_text(vlm / "comparison.md", table)
    return {"comparison": doc, "table": table, "runs": {k: str(v) for k, v in runs.items()}, "out": str(vlm),
            "lora_training": lora["training"]}
