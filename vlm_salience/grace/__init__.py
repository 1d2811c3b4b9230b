"""GRACE: coarse-to-fine affective text (CATE), motion-difference weights and token-level optimal transport
between text and visual tokens, as a video classifier on the shared engine (video/task.py).

`model.kind: grace` is registered by `grace/task.py` (`@register_video_model`), found through the entry point
`grace` of the group `vlm_salience.video_models`; its ablations are `variants:` of configs/video/grace_*.yaml."""
