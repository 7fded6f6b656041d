"""Training from a composed Hydra config (``python train.py`` at the repository root calls ``train``)."""

from __future__ import annotations

import json
import time
import traceback
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict

from .common import (
    build_trainer,
    check_image_size,
    check_pairing,
    finish_wandb,
    log,
    print_summary,
    record_test_split,
    remember_wandb_id,
    scalar_metrics,
    untrusted_checkpoint,
    write_metrics,
)


def output_dir(cfg: DictConfig) -> str:
    try:
        return HydraConfig.get().runtime.output_dir
    except ValueError:  # composed outside @hydra.main (tests)
        return str(cfg.paths.output_dir)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit (and optionally test) the model; return the final metrics, also written to ``metrics.json``."""
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.dataset)
    model = instantiate(cfg.model)
    check_pairing(model, datamodule)
    check_image_size(model, datamodule.image_size)
    trainer = build_trainer(cfg)
    counts = {"model/params_total": sum(p.numel() for p in model.parameters()),
              "model/params_trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
              "model/gflops": forward_gflops(model, datamodule.image_size)}
    for lg in trainer.loggers:
        lg.log_hyperparams(counts)
    out = output_dir(cfg)
    remember_wandb_id(trainer, out)
    fit_s = 0.0
    if cfg.get("train", True):
        log.info("training %s on %s", type(model).__name__, type(datamodule).__name__)
        start = time.perf_counter()
        with untrusted_checkpoint(cfg.get("ckpt_path")):
            trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"), weights_only=True)
        fit_s = time.perf_counter() - start
    metrics = scalar_metrics(trainer.callback_metrics)
    # wall time of fit (training + validation), so sweeps can compare quality per CPU-minute
    metrics["time/fit_min"] = round(fit_s / 60, 3)
    ckpt_cb = trainer.checkpoint_callback
    best = getattr(ckpt_cb, "best_model_path", "") or ""
    tested = {}
    if cfg.get("test", False):
        trainer.test(model, datamodule=datamodule, ckpt_path=best or None, weights_only=True)
        metrics.update(scalar_metrics(trainer.callback_metrics))
        tested = record_test_split(datamodule)
    extra = {**counts, "best_model_path": best, "monitor": cfg.get("optimized_metric"),
             "best_model_score": float(ckpt_cb.best_model_score) if getattr(ckpt_cb, "best_model_score", None)
             is not None else None, "global_step": trainer.global_step, **tested, "status": "completed"}
    if trainer.is_global_zero:  # under DDP every rank runs this function; one writes the results
        write_metrics(out, metrics, **extra)
        print_summary(f"final metrics ({out})", metrics)
    return {**metrics, **extra}


def forward_gflops(model, image_size: int) -> float:
    """Forward GFLOPs for one image at the training size (``torch.utils.flop_counter``: 2 per multiply-add)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    try:
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            model(torch.zeros(1, 3, image_size, image_size, device=next(model.parameters()).device))
        return round(counter.get_total_flops() / 1e9, 4)
    finally:
        model.train(was_training)


def optimized_value(cfg: DictConfig, metrics: dict[str, Any]) -> float | None:
    name = cfg.get("optimized_metric")
    return metrics.get(name) if name else None


def in_multirun() -> bool:
    try:
        return HydraConfig.get().mode == RunMode.MULTIRUN
    except ValueError:
        return False


JOB_RECORD = "job.json"  # the job's overrides, written when it starts: what resume=true checks a job folder against
RESUME_KEYS = ("resume", "resume_failed")


def job_overrides() -> list[str]:
    """This job's task overrides (``hydra.overrides.task``), less the resume switches."""
    try:
        task = [str(o) for o in HydraConfig.get().overrides.task]
    except ValueError:  # composed outside @hydra.main
        return []
    return sorted(o for o in task if o.lstrip("+~").split("=", 1)[0] not in RESUME_KEYS)


def resume_plan(cfg: DictConfig) -> tuple[str, Any]:
    """What ``resume=true`` does with this job's folder (the same command re-run with ``hydra.sweep.dir`` of the
    killed sweep gives every job its old folder back):

    - ``("skip", metrics)``: ``metrics.json`` says completed: nothing trains again, the recorded value is returned;
    - ``("skip", metrics)`` too for a failed job, unless ``resume_failed=true``, which trains it again;
    - ``("continue", last.ckpt)``: the job was interrupted: training continues from its last checkpoint (epoch,
      optimizer, scheduler; the same W&B run);
    - ``("train", None)``: nothing there yet.
    A folder whose recorded overrides differ from this job's is an error: the sweep is not the same one."""
    out = Path(output_dir(cfg))
    record = out / JOB_RECORD
    if record.is_file():
        theirs = json.loads(record.read_text()).get("overrides", [])
        mine = job_overrides()
        if theirs != mine:
            raise ValueError(f"resume: {out} holds a job with overrides {theirs}, not this job's {mine}; resume with "
                             f"the same command (and hydra.sweep.dir) as the interrupted sweep")
    metrics_file = out / "metrics.json"
    if metrics_file.is_file():
        metrics = json.loads(metrics_file.read_text())
        if metrics.get("status") == "completed":
            return "skip", metrics
        if metrics.get("status") == "failed" and not cfg.get("resume_failed", False):
            return "skip", metrics
    last = out / "checkpoints" / "last.ckpt"
    if last.is_file():
        return "continue", last
    return "train", None


def keep_csv_history(out: Path) -> None:
    """Lightning's CSV logger starts its file anew in the same folder: keep the interrupted part's rows beside it
    (``metrics.part<k>.csv``, k = 0, 1, ... in order)."""
    for csv_file in out.glob("**/metrics.csv"):
        k = len(list(csv_file.parent.glob("metrics.part*.csv")))
        target = csv_file.with_name(f"metrics.part{k}.csv")
        csv_file.rename(target)
        log.info("resume: the interrupted part's CSV log kept as %s", target)


def run(cfg: DictConfig) -> float | None:
    """The entry point's job: train, return the optimized metric. A job that raises writes ``metrics.json`` with
    ``status: failed`` and the error; in a multirun the sweep goes on to the next job, in a single run it re-raises.
    With ``resume=true`` a job whose folder says it completed is skipped, an interrupted one continues from its
    ``last.ckpt`` (``resume_plan``)."""
    out = output_dir(cfg)
    if cfg.get("resume", False):
        plan, what = resume_plan(cfg)
        if plan == "skip":
            log.info("resume: %s already %s: skipped (its metrics.json kept)", out, what.get("status"))
            return optimized_value(cfg, what) if what.get("status") == "completed" else None
        if plan == "continue":
            log.info("resume: %s was interrupted: training continues from %s", out, what)
            with open_dict(cfg):
                cfg.ckpt_path = str(what)
            keep_csv_history(Path(out))
        if plan == "train" or cfg.get("resume_failed", False):
            (Path(out) / "metrics.json").unlink(missing_ok=True)
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / JOB_RECORD).write_text(json.dumps({"overrides": job_overrides()}, indent=1))
    try:
        value = optimized_value(cfg, train(cfg))
        finish_wandb(0)
        return value
    except Exception as e:  # noqa: BLE001 - recorded, then re-raised or reported as a failed sweep job
        root = e
        while root.__cause__ is not None:  # Hydra wraps the constructor's error: record the real one
            root = root.__cause__
        write_metrics(out, {}, status="failed", error=f"{type(root).__name__}: {root}",
                      traceback=traceback.format_exc(), monitor=cfg.get("optimized_metric"))
        log.error("job failed: %s: %s (recorded in %s/metrics.json)", type(root).__name__, root, out)
        finish_wandb(1)
        if in_multirun():
            return None
        raise
