"""Real `python train.py` and `python eval.py` subprocesses with small overrides."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(script, *overrides, cwd=ROOT, timeout=600, env=None):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", **(env or {})}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, str(ROOT / script), *overrides], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)
    proc.elapsed_s = time.perf_counter() - start
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


@pytest.mark.slow
def test_train_then_eval_subprocess(tmp_path, shapes_root):
    common = [f"paths.log_dir={tmp_path}/outputs", f"dataset.data_dir={shapes_root}", "dataset.num_train=24",
              "dataset.num_val=8", "dataset.source_size=64", "dataset.seed=3", "dataset.image_size=64",
              "dataset.batch_size=8", "dataset.num_workers=0", "backbone=test_resnet"]
    proc = run("train.py", *common, "head=fcn", "loss=tversky", "trainer.max_epochs=2", "test=true")
    runs = list((tmp_path / "outputs" / "train" / "runs").iterdir())
    assert len(runs) == 1
    out = runs[0]
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("val/miou", "val/loss", "val/pixel_acc", "train/loss", "test/miou", "best_model_path", "monitor"):
        assert key in metrics, key
    assert metrics["monitor"] == "val/miou" and 0.0 <= metrics["val/miou"] <= 1.0
    assert metrics["global_step"] == 2 * 3  # 24 images / batch 8, two epochs
    # the generated shapes have no test split: metrics.json says test/* come from val
    assert metrics["test_split"] == "val" and "no labelled test split" in metrics["test_split_note"]
    assert 0 < metrics["time/fit_min"] < proc.elapsed_s / 60  # fit's wall time, within the whole process's
    assert (out / ".hydra" / "config.yaml").is_file() and (out / ".hydra" / "overrides.yaml").is_file()
    assert (out / "checkpoints" / "last.ckpt").is_file() and Path(metrics["best_model_path"]).is_file()
    assert (out / "csv" / "metrics.csv").is_file()
    assert "val/miou" in proc.stdout  # the final metrics table
    # per-class IoU named from the dataset's class names, printed as a class x stage table
    for name in ("background", "circle", "square", "triangle", "star"):
        assert 0.0 <= metrics[f"val/iou_{name}"] <= 1.0 and f"test/iou_{name}" in metrics
    assert "per-class IoU" in proc.stdout

    # multi-scale + flip evaluation (autotimm.tta), scored at the original resolution
    proc = run("eval.py", *common, "head=fcn", "loss=tversky", f"ckpt_path={out / 'checkpoints' / 'last.ckpt'}",
               "tta.scales=[0.75,1.0]", "tta.flip=true")
    evals = list((tmp_path / "outputs" / "eval" / "runs").iterdir())
    em = json.loads((evals[0] / "metrics.json").read_text())
    assert 0.0 <= em["test/miou"] <= 1.0 and em["ckpt_path"].endswith("last.ckpt") and em["test_split"] == "val"
    assert "test-time augmentation: TTA(scales=[0.75, 1.0], flip=True" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_instance_train_eval_and_mask_size_multirun(tmp_path, shapes_root):
    common = [f"paths.log_dir={tmp_path}/outputs", f"dataset.data_dir={shapes_root}", "dataset.num_train=24",
              "dataset.num_val=8", "dataset.source_size=64", "dataset.seed=3", "dataset.image_size=64",
              "dataset.batch_size=8", "dataset.num_workers=0", "backbone=test_resnet", "arch.fpn_channels=32",
              "arch.head_num_convs=1", "head.num_convs=1", "trainer.check_val_every_n_epoch=1"]
    run("train.py", "experiment=instance_shapes", *common, "trainer.max_epochs=1", "test=true")
    out = next((tmp_path / "outputs" / "instance_shapes" / "runs").iterdir())
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("val/mask_map", "val/mask_map_50", "val/bbox_map", "test/mask_map", "train/loss"):
        assert key in metrics, key
    assert metrics["monitor"] == "val/mask_map_50"
    run("eval.py", "model=instance", *common, f"ckpt_path={out / 'checkpoints' / 'last.ckpt'}")
    em = json.loads(next((tmp_path / "outputs" / "eval" / "runs").iterdir()).joinpath("metrics.json").read_text())
    assert "test/mask_map_50" in em and "test/bbox_map" in em

    run("train.py", "-m", "model=instance", "head.mask_size=14,28", *common, "trainer.max_epochs=1",
        "task_name=sweep")
    sweep = next((tmp_path / "outputs" / "sweep" / "multiruns").iterdir())
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit())
    assert [p.name for p in jobs] == ["0", "1"]
    for job, size in zip(jobs, (14, 28)):
        assert json.loads((job / "metrics.json").read_text())["status"] == "completed"
        assert f"head.mask_size={size}" in (job / ".hydra" / "overrides.yaml").read_text()


@pytest.mark.slow
def test_ddp_two_cpu_processes_log_metrics_once(tmp_path, shapes_root):
    import csv

    proc = run("train.py", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
               f"paths.log_dir={tmp_path}/outputs", f"dataset.data_dir={shapes_root}", "dataset.num_train=24",
               "dataset.num_val=8", "dataset.source_size=64", "dataset.seed=3", "dataset.image_size=64",
               "dataset.batch_size=4", "dataset.num_workers=0", "backbone=test_resnet", "trainer.max_epochs=2",
               "trainer.check_val_every_n_epoch=1")
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in proc.stdout + proc.stderr  # two processes (gloo)
    out = next((tmp_path / "outputs" / "train" / "runs").iterdir())
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "completed"
    assert metrics["global_step"] == 2 * 24 // (2 * 4)  # each rank sees half the data per epoch
    rows = [r for r in csv.DictReader(open(out / "csv" / "metrics.csv")) if r["val/miou"]]
    assert [int(r["epoch"]) for r in rows] == [0, 1]  # logged once per epoch, not once per process
    assert (out / "checkpoints" / "last.ckpt").is_file()
