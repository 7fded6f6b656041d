"""Training from a composed Hydra config (``python train.py`` at the repository root calls ``train``)."""

from __future__ import annotations

import time
import traceback
from typing import Any

import pytorch_lightning as pl
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig

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


def run(cfg: DictConfig) -> float | None:
    """The entry point's job: train, return the optimized metric. A job that raises writes ``metrics.json`` with
    ``status: failed`` and the error; in a multirun the sweep goes on to the next job, in a single run it re-raises."""
    try:
        value = optimized_value(cfg, train(cfg))
        finish_wandb(0)
        return value
    except Exception as e:  # noqa: BLE001 - recorded, then re-raised or reported as a failed sweep job
        out = output_dir(cfg)
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
