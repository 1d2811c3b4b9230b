"""Which video models exist: `kind` in a video YAML's `model:` -> the task class that trains and predicts it.

A model registers its task class with a decorator, as timm's `@register_model` does; its config class is the task
class's `config_class` (a `VideoTrainConfig[ItsModelConfig]`):

    @register_video_model("my_model")
    class MyTask(VideoClassifierTask):
        config_class = VideoTrainConfig[MyModelConfig]   # MyModelConfig has `kind: Literal["my_model"]`

The video layer names no model. The built-in ones (baseline, fer_pooling, ous, grace), and any package's, are
found through the entry-point group `vlm_salience.video_models` (pyproject.toml: `kind = "module:TaskClass"`):
the first lookup of a kind nobody registered yet loads the entry point of that name, whose import runs the
decorator. A model defined in a script or a test registers by being imported (the decorator runs).
"""

from __future__ import annotations

from typing import Any, TypeVar

from vlm_salience.errors import ConfigError

ENTRY_POINTS = "vlm_salience.video_models"

_MODELS: dict[str, type] = {}
T = TypeVar("T", bound=type)


def register_video_model(kind: str):
    """Class decorator: make `model.kind: <kind>` train this task class. Registering another class under a taken
    kind is an error (two models would answer to one name); registering the same class again is a no-op."""

    def deco(cls: T) -> T:
        have = _MODELS.get(kind)
        if have is not None and have is not cls and _qualname(have) != _qualname(cls):
            raise ConfigError(f"video model kind '{kind}' is already registered by {_qualname(have)}; "
                              f"{_qualname(cls)} must use another kind")
        if not hasattr(cls, "config_class"):
            raise ConfigError(f"{_qualname(cls)} registers as video model '{kind}' without a `config_class` "
                              "(a VideoTrainConfig[ItsModelConfig])")
        _MODELS[kind] = cls
        return cls

    return deco


def _qualname(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


_SCANNED: dict[str, Any] | None = None


def _entry_points(kind: str | None = None) -> dict[str, Any]:
    """name -> entry point of the group. `entry_points()` keeps one copy of each distribution, the first on the
    path: a stale `vlm_salience.egg-info` in a source checkout (the current folder) hides the installed metadata
    and its group. Where the fast lookup lacks `kind` (or for a full list), every distribution found is read
    (about half a second, once per process)."""
    global _SCANNED
    from importlib.metadata import distributions, entry_points

    fast = {ep.name: ep for ep in entry_points(group=ENTRY_POINTS)}
    if kind is not None and kind in fast:
        return fast
    if _SCANNED is None:
        _SCANNED = {}
        for dist in distributions():
            for ep in dist.entry_points:
                if ep.group == ENTRY_POINTS:
                    _SCANNED.setdefault(ep.name, ep)
    return {**_SCANNED, **fast}


def video_model(kind: str) -> type:
    """The task class of a model kind; loads its entry point on first use. Unknown kinds name the known ones."""
    if kind not in _MODELS:
        ep = _entry_points(kind).get(kind)
        if ep is not None:
            cls = ep.load()  # importing its module runs its @register_video_model
            if kind not in _MODELS:  # an entry point to a class without the decorator
                register_video_model(kind)(cls)
    if kind not in _MODELS:
        stale = "" if _entry_points() else (f" No entry point of the group '{ENTRY_POINTS}' is installed: the "
                                             "package metadata is stale; reinstall it (`pip install -e .`).")
        raise ConfigError(f"model.kind '{kind}' is not a video model; known: {', '.join(list_video_models())}. "
                          "A new model registers its task class with @register_video_model(kind) (imported before "
                          f"the config is loaded) or an entry point in the group '{ENTRY_POINTS}'.{stale}")
    return _MODELS[kind]


def list_video_models() -> list[str]:
    """Every kind a YAML may name: registered ones and those an installed entry point offers."""
    return sorted(set(_MODELS) | set(_entry_points()))


def model_config_class(kind: str) -> type:
    """The `model:` section's config class of a kind (the `model` field of its task's config class)."""
    return video_model(kind).config_class.model_fields["model"].annotation
