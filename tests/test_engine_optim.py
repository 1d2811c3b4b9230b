"""The engine's optimiser choices that paper recipes need: Adam (L2 decay in the gradient, not AdamW's decoupled
decay), ReduceLROnPlateau stepped on a validation metric after each evaluation (every epoch or every N steps),
and a configured optim.lr that no parameter group uses is refused instead of silently overridden."""

from __future__ import annotations

import json

import pytest
import torch

from tests.test_engine import LinearTask, config
from vlm_salience.engine.config import EngineConfig
from vlm_salience.engine.engine import Engine, check_configured_lr, train
from vlm_salience.errors import ConfigError


class GroupTask(LinearTask):
    """The toy regression whose one parameter group sets its own rate (as the video models' model.lr do)."""

    def __init__(self, rate: float, **kw) -> None:
        super().__init__(**kw)
        self.rate = rate

    def setup(self, accelerator):
        model, params = super().setup(accelerator)
        return model, [{"params": params, "lr": self.rate, "name": "all"}]


class FlatTask(LinearTask):
    """Its validation metric never improves: the plateau schedule must cut the rate."""

    def evaluate(self, model) -> dict[str, float]:
        return {"eval/flat": 1.0}


def test_adam_is_torch_adam_with_l2_decay(tmp_path):
    """optimizer: adam builds torch.optim.Adam (decay added to the gradient), adamw AdamW; one step differs."""
    finals = {}
    for name in ("adam", "adamw"):
        task = LinearTask()
        engine = Engine(config(tmp_path / name, optim__optimizer=name, optim__weight_decay=0.5, optim__max_steps=3),
                        task, progress=False)
        engine.run()
        inner = getattr(engine.optimizer, "optimizer", engine.optimizer)
        assert type(inner) is {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[name]
        finals[name] = task.final
    assert not torch.allclose(finals["adam"]["1.weight"], finals["adamw"]["1.weight"])


def test_plateau_cuts_the_rate_after_patience_evaluations_without_improvement(tmp_path):
    # 24 examples / batch 4 = 6 steps an epoch; 5 epochs; evaluated after epochs 1..4 (and at the end)
    cfg = config(tmp_path, optim__schedule="plateau", optim__warmup_ratio=0.0, optim__max_steps=None,
                 optim__epochs=5, optim__plateau={"metric": "eval/flat", "mode": "min", "factor": 0.5,
                                                  "patience": 1, "threshold": 0.0},
                 eval={"every_epochs": 1})
    r = train(cfg, FlatTask(), progress=False)
    assert [h["step"] for h in r["history"]] == [6, 12, 18, 24, 30]
    lrs = [json.loads(line) for line in (tmp_path / "out/logs/linear/metrics.jsonl").read_text().splitlines()]
    lr_at = {rec["step"]: rec["train/lr"] for rec in lrs if "train/lr" in rec}
    # evaluation 1 sets the best, 2 is bad epoch 1 (= patience), 3 is bad epoch 2 > patience: halved after step 18
    assert lr_at[10] == pytest.approx(0.05) and lr_at[20] == pytest.approx(0.025)


def test_plateau_names_a_metric_the_task_does_not_return(tmp_path):
    cfg = config(tmp_path, optim__schedule="plateau", optim__warmup_ratio=0.0,
                 optim__plateau={"metric": "eval/uar"}, eval={"every_steps": 2})
    with pytest.raises(ConfigError, match="eval/uar.*eval/mse"):
        train(cfg, LinearTask(), progress=False)


def test_plateau_needs_evaluations_and_no_warmup(tmp_path):
    with pytest.raises(ValueError, match="every_epochs"):
        config(tmp_path, optim__schedule="plateau", optim__warmup_ratio=0.0)
    with pytest.raises(ValueError, match="warmup_ratio: 0"):
        config(tmp_path, optim__schedule="plateau", eval={"every_epochs": 1})


def test_a_configured_lr_no_group_uses_is_refused(tmp_path):
    """optim.lr 0.05 written in the config, but the task's only group trains at 0.01: refused, naming both."""
    with pytest.raises(ConfigError, match=r"optim.lr 0.05 .*all 0.01"):
        train(config(tmp_path / "a"), GroupTask(0.01), progress=False)
    # the same rate in the group: honoured
    assert train(config(tmp_path / "b"), GroupTask(0.05), progress=False)["steps"] == 10


def test_an_unset_lr_is_only_the_default_of_groups_that_set_none(tmp_path):
    raw = config(tmp_path).model_dump(mode="json")
    del raw["optim"]["lr"]
    cfg = EngineConfig.model_validate(raw)
    assert "lr" not in cfg.optim.model_fields_set
    check_configured_lr(cfg.optim, [{"params": [], "lr": 0.01}], "t")  # no error
    # plain parameters, or a group without its own rate, train at optim.lr: never refused
    check_configured_lr(config(tmp_path).optim, [torch.nn.Parameter(torch.zeros(1))], "t")
    check_configured_lr(config(tmp_path).optim, [{"params": []}, {"params": [], "lr": 0.01}], "t")


def test_multistep_multiplies_every_rate_by_gamma_after_each_milestone_epoch(tmp_path):
    """DFER-CLIP's MultiStepLR: 6 steps an epoch, milestones after epochs 1 and 2: 0.05, then 0.005, 0.0005."""
    cfg = config(tmp_path, optim__schedule="multistep", optim__warmup_ratio=0.0, optim__max_steps=None,
                 optim__epochs=3, optim__milestones=[1, 2], optim__gamma=0.1, log_every=1)
    train(cfg, LinearTask(), progress=False)
    recs = [json.loads(line) for line in (tmp_path / "out/logs/linear/metrics.jsonl").read_text().splitlines()]
    lr_at = {rec["step"]: rec["train/lr"] for rec in recs if "train/lr" in rec}
    # train/lr is logged after the step's scheduler update: the rate the next step trains at
    assert lr_at[5] == pytest.approx(0.05) and lr_at[6] == pytest.approx(0.005)
    assert lr_at[11] == pytest.approx(0.005) and lr_at[12] == pytest.approx(0.0005)
    with pytest.raises(ValueError, match="milestones"):
        config(tmp_path, optim__schedule="multistep", optim__warmup_ratio=0.0)


# -- the schedule under several processes ----------------------------------------------------------------------------

def _schedule_config(out, world: int) -> EngineConfig:
    """48 examples, 16 per optimizer step: 3 steps an epoch, 6 steps; warm-up then cosine decay, lr logged each step."""
    return EngineConfig.model_validate({
        "name": "toy", "out": str(out), "tracker": "none", "group_by_length": False, "log_every": 1,
        "optim": {"optimizer": "sgd", "lr": 0.05, "epochs": 2, "batch_size": 8 // world, "grad_accum": 2,
                  "warmup_ratio": 0.2, "schedule": "cosine", "max_grad_norm": None},
        "checkpoint": {"every_steps": None}})


def _rates(out) -> list[float]:
    lines = (out / "logs/linear/metrics.jsonl").read_text().splitlines()
    return [json.loads(x)["train/lr"] for x in lines if "train/lr" in json.loads(x)]


@pytest.mark.slow
def test_two_processes_follow_the_schedule_of_one(tmp_path):
    """Under `accelerate launch` (2 processes) the schedule advances once per optimizer step, as with one process
    (accelerate's prepared scheduler would step once per process: the warm-up and decay at twice the speed)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    out = tmp_path / "two"
    out.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(repo)}
    r = subprocess.run([str(Path(sys.executable).parent / "accelerate"), "launch", "--config_file",
                        str(repo / "configs" / "accelerate" / "cpu_ddp.yaml"), "--main_process_port", "29551",
                        str(Path(__file__).resolve()), str(out)], capture_output=True, text=True, env=env,
                       timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    train(_schedule_config(tmp_path / "one", 1), LinearTask(n=48), progress=False)
    one, two = _rates(tmp_path / "one"), _rates(out)
    assert len(one) == 6 and two == pytest.approx(one)


if __name__ == "__main__":
    import os
    import sys
    from pathlib import Path

    train(_schedule_config(Path(sys.argv[1]), int(os.environ.get("WORLD_SIZE", "1"))), LinearTask(n=48),
          progress=False)
