"""GRACE: coarse-to-fine affective text (CATE), motion-difference weights and token-level optimal transport
between text and visual tokens, as a video classifier on the shared engine (video/task.py)."""


def register() -> None:
    """Make `model.kind: grace` known to the video workflow (video/config.py's VIDEO_MODELS)."""
    from vlm_salience.video.config import VIDEO_MODELS

    VIDEO_MODELS.setdefault("grace", "vlm_salience.grace.task:GraceTask")
