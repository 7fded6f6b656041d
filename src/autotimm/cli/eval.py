"""Evaluate a checkpoint on the test split of the configured dataset (``python eval.py ckpt_path=...``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from ..tasks import load_task
from ..tta import as_tta
from .common import (
    build_trainer,
    check_pairing,
    log,
    print_summary,
    record_test_split,
    scalar_metrics,
    untrusted_checkpoint,
    write_metrics,
)
from .train import output_dir


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    ckpt = Path(str(cfg.ckpt_path))
    if not ckpt.is_file():
        raise FileNotFoundError(f"ckpt_path: {ckpt} does not exist")
    datamodule = instantiate(cfg.dataset)
    # the checkpoint says which task it holds; its hyper-parameters rebuild the model; weights-only loading never
    # runs code from the file
    with untrusted_checkpoint(ckpt):
        model = load_task(ckpt)
    check_pairing(model, datamodule)
    tta = as_tta(OmegaConf.to_container(cfg.tta, resolve=True)) if cfg.get("tta") else None
    if tta is not None and not tta.identity:
        model.set_tta(tta, ["test"])  # instance models: sliding windows only (mode=slide)
        log.info("test-time augmentation: %s", tta)
    trainer = build_trainer(cfg, callbacks=False)
    log.info("testing %s", ckpt)
    trainer.test(model, datamodule=datamodule)
    metrics = scalar_metrics(trainer.callback_metrics)
    write_metrics(output_dir(cfg), metrics, ckpt_path=str(ckpt), **record_test_split(datamodule), status="completed")
    print_summary(f"test metrics of {ckpt.name}", metrics)
    return metrics
