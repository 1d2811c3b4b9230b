"""OUS (Mai et al., "OUS: Scene-Guided Dynamic Facial Expression Recognition") on the toolkit's video foundation.

Only OUS's own ideas live here: the two-stream model on one shared encoder call (`model.py`), its losses
(`losses.py`), its config with the ablation switches and the salience gate (`config.py`), its task for the engine
(`task.py`, registered as `model.kind: ous`). Corpora, frame cache, engine, baseline pieces, the variants runner
(`video/variants.py`: OUS against the baseline and its ablations), metrics and the per-run report are the
foundation's (`data/video`, `video/`, `engine/`, `metrics.py`).
"""
