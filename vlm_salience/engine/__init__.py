"""The training engine: one loop for every model, on accelerate (`engine.py`), its config (`config.py`:
`EngineConfig`, which every task config subclasses) and the contract a model fulfils (`task.py`: `Task`).

It imports nothing above it (no prompting, study, report, training or video), so a video model reaches the engine
without loading the VLM stack. The VLM LoRA task is `training/vlm_task.py`; the video tasks are `video/task.py`,
`ous/task.py`, `grace/task.py`.
"""

from vlm_salience.engine.config import EngineConfig
from vlm_salience.engine.engine import CheckpointError, Engine
from vlm_salience.engine.task import Task

__all__ = ["CheckpointError", "Engine", "EngineConfig", "Task"]
