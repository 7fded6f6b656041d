"""Shared pieces of the entry points: building objects from a composed config, writing run results."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import pickle
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

log = logging.getLogger("autotimm")


def instantiate_group(cfg: DictConfig | None) -> list[Any]:
    """``{name: {_target_: ...}}`` -> list of objects (callbacks, loggers)."""
    if not cfg:
        return []
    return [instantiate(c) for c in cfg.values() if c is not None and "_target_" in c]


def wandb_run_defaults(cfg: DictConfig) -> None:
    """A W&B logger without name/group gets the job's overrides as its name and tags, and in a multirun the sweep
    folder as its group, so the runs of one sweep sit together on the dashboard."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hc = HydraConfig.get() if HydraConfig.initialized() else None
    overrides = [str(o) for o in hc.overrides.task] if hc else []
    for node in (cfg.get("logger") or {}).values():
        if not node or not str(node.get("_target_", "")).endswith("WandbLogger"):
            continue
        with open_dict(node):
            if not node.get("name"):
                node.name = (",".join(o for o in overrides if not o.startswith(("paths.", "dataset.data_dir")))
                             or cfg.get("task_name", "run"))[:128]
            if not node.get("group") and hc is not None and hc.mode == RunMode.MULTIRUN:
                node.group = f"{cfg.get('task_name', 'sweep')}/{Path(hc.sweep.dir).name}"
            node.tags = list(node.get("tags") or []) + [o[:64] for o in overrides if not o.startswith("paths.")]
            ckpt = cfg.get("ckpt_path")
            id_file = Path(str(ckpt)).resolve().parents[1] / WANDB_ID_FILE if ckpt else None
            if not node.get("id") and id_file is not None and id_file.is_file():
                node.id = id_file.read_text().strip()  # resuming a run: continue its W&B run
                node.resume = "allow"


WANDB_ID_FILE = "wandb_run_id"


def remember_wandb_id(trainer: pl.Trainer, output_dir: str | Path) -> None:
    """Write the W&B run id into the run folder, so ``ckpt_path=<run>/checkpoints/last.ckpt`` resumes the same run."""
    from pytorch_lightning.loggers import WandbLogger

    for lg in trainer.loggers:
        if isinstance(lg, WandbLogger) and trainer.is_global_zero:
            (Path(output_dir) / WANDB_ID_FILE).write_text(str(lg.experiment.id))


def finish_wandb(exit_code: int) -> None:
    """Close an open W&B run (also when a job fails, so it is not left running)."""
    import sys

    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish(exit_code=exit_code)


def build_trainer(cfg: DictConfig, callbacks: bool = True) -> pl.Trainer:
    wandb_run_defaults(cfg)
    cbs = instantiate_group(cfg.get("callbacks")) if callbacks else []
    loggers = instantiate_group(cfg.get("logger"))
    trainer = instantiate(cfg.trainer, callbacks=cbs, logger=loggers or False)
    container = OmegaConf.to_container(cfg, resolve=True)
    for lg in loggers:
        lg.log_hyperparams(container)
    return trainer


@contextlib.contextmanager
def untrusted_checkpoint(path: Any):
    """Checkpoints load with ``weights_only=True``: tensors and plain data only, no code runs. A file that needs
    more is refused with a clear error instead of torch's long unpickling message."""
    try:
        yield
    except pickle.UnpicklingError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if "Unsupported global" in ln] or [type(e).__name__]
        raise ValueError(f"ckpt_path {path}: refusing to load it: it holds Python objects beyond tensors and plain "
                         f"data ({lines[0]}); loading it could run code. If you trust its source, load it yourself "
                         f"with torch.load(..., weights_only=False).") from None


def check_pairing(model: Any, datamodule: Any) -> None:
    """A semantic model needs a semantic datamodule and an instance model an instance one (their ``task_kind``);
    say so up front."""
    wants, has = model.task_kind, getattr(datamodule, "task_kind", None)
    if wants != has:
        need = "an instance dataset (dataset=shapes_instance or dataset=coco with model=instance)" \
            if wants == "instance" else "a semantic dataset (dataset=shapes, png, coco, cityscapes or voc)"
        raise ValueError(f"model {type(model).__name__} cannot train on {type(datamodule).__name__}: it needs {need}")


def check_image_size(model: Any, image_size: int) -> None:
    """The datamodule's ``image_size`` must be usable by the backbone: at least its deepest stride, and accepted
    by a forward pass (fixed-size ViTs, window sizes...). Checked once with a dummy image, before any data loads."""
    import torch

    backbone = model.backbone
    name = backbone.config.model_name
    stride = backbone.output_stride
    if image_size < stride:
        raise ValueError(f"dataset.image_size={image_size} is smaller than backbone {name}'s output stride {stride}; "
                         f"use at least {stride} (ideally a multiple of {stride})")
    was_training = backbone.training
    backbone.eval()
    try:
        with torch.no_grad():
            backbone(torch.zeros(1, 3, image_size, image_size, device=next(model.parameters()).device))
    except Exception as e:  # noqa: BLE001 - reported with the field to change
        raise ValueError(f"dataset.image_size={image_size} is not usable by backbone {name}: {e}. Use a size its "
                         f"architecture accepts (a multiple of {stride}; fixed-size models: backbone.img_size)") from e
    finally:
        backbone.train(was_training)


def scalar_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    out = {}
    for k, v in metrics.items():
        if isinstance(v, torch.Tensor) and v.numel() == 1:
            v = v.item()
        if isinstance(v, (int, float)) and not k.endswith(("_step", "_epoch")):
            out[k] = float(v) if math.isfinite(float(v)) else str(v)
    return dict(sorted(out.items()))


def write_metrics(output_dir: str | Path, metrics: dict[str, Any], **extra: Any) -> Path:
    path = Path(output_dir) / "metrics.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({**metrics, **extra}, indent=2, default=str))
    tmp.replace(path)
    return path


def print_summary(title: str, metrics: dict[str, Any]) -> None:
    """The final metrics as a table; per-class metrics (``<stage>/iou_<class>``) as a second table, one row per
    class and one column per stage."""
    import re

    from rich.console import Console
    from rich.table import Table

    per_class: dict[str, dict[str, float]] = {}
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in metrics.items():
        m = re.fullmatch(r"(\w+)/iou_(.+)", k)
        if m:
            per_class.setdefault(m.group(2), {})[m.group(1)] = v
            continue
        table.add_row(k, f"{v:.4f}" if isinstance(v, float) else str(v))
    console = Console()
    console.print(table)
    if per_class:
        stages = sorted({s for row in per_class.values() for s in row}, key=lambda s: ("val", "test").index(s)
                        if s in ("val", "test") else 2)
        pc = Table(title="per-class IoU")
        pc.add_column("class")
        for stage in stages:
            pc.add_column(stage, justify="right")
        for name, row in per_class.items():
            pc.add_row(name, *(f"{row[s]:.4f}" if s in row else "" for s in stages))
        console.print(pc)


def record_test_split(datamodule: Any) -> dict[str, Any]:
    """What ``metrics.json`` says about the split ``test/*`` metrics come from."""
    split = getattr(datamodule, "test_split_used", None)
    if split is None:
        return {}
    record: dict[str, Any] = {"test_split": split}
    if getattr(datamodule, "test_on_val", False):
        record["test_split_note"] = (f"the dataset has no labelled test split: test/* metrics were computed on the "
                                     f"{split!r} split")
    return record
