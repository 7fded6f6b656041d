"""Optuna search, Slurm / local submitit launchers."""

import json

import pytest
from omegaconf import OmegaConf
from test_configs import compose_cfg

TINY = ["dataset.num_train=24", "dataset.num_val=8", "dataset.source_size=64", "dataset.seed=3",
        "dataset.image_size=64", "dataset.batch_size=8", "dataset.num_workers=0", "backbone=test_resnet",
        "trainer.max_epochs=1"]


def test_slurm_launcher_config(tmp_path):
    cfg = compose_cfg(tmp_path, ["launcher=slurm", "hydra.launcher.partition=a100", "hydra.launcher.timeout_min=30"])
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (launcher.partition, launcher.gpus_per_node, launcher.timeout_min, launcher.nodes) == ("a100", 1, 30, 1)
    assert OmegaConf.select(cfg, "hydra.launcher.submitit_folder", throw_on_resolution_failure=False) is not None


@pytest.mark.slow
def test_submitit_local_runs_a_two_job_sweep(tmp_path, shapes_root):
    from test_cli import run

    run("train.py", "-m", "launcher=submitit_local", f"paths.log_dir={tmp_path}/outputs",
        f"dataset.data_dir={shapes_root}", *TINY, "task_name=local", "loss.dice_weight=0.5,1.0")
    sweep = next((tmp_path / "outputs" / "local" / "multiruns").iterdir())
    for job in ("0", "1"):
        assert json.loads((sweep / job / "metrics.json").read_text())["status"] == "completed"
    assert (sweep / ".submitit").is_dir()  # the jobs went through submitit


@pytest.mark.slow
def test_optuna_search(tmp_path, shapes_root):
    from test_cli import run

    run("train.py", "hparams_search=optuna_semantic", "hydra.sweeper.n_trials=2",
        "hydra.sweeper.sampler.n_startup_trials=2", f"paths.log_dir={tmp_path}/outputs",
        f"dataset.data_dir={shapes_root}", *TINY, "task_name=optuna")
    sweep = next((tmp_path / "outputs" / "optuna" / "multiruns").iterdir())
    results = OmegaConf.load(sweep / "optimization_results.yaml")
    assert set(results.best_params) == {"model.lr", "model.weight_decay", "loss.dice_weight"}
    values = [json.loads((sweep / j / "metrics.json").read_text())["val/miou"] for j in ("0", "1")]
    assert results.best_value == pytest.approx(max(values))
