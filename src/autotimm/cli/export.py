"""Export a checkpoint (``python export.py ckpt_path=... format=torchscript|onnx``)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from ..export import EXPORTED, export_model
from .common import log
from .predict import load_task


def export(cfg: DictConfig) -> Path:
    ckpt = Path(str(cfg.ckpt_path))
    if not ckpt.is_file():
        raise FileNotFoundError(f"ckpt_path: {ckpt} does not exist")
    fmt = str(cfg.format)
    model = load_task(ckpt)
    suffix = ".pt" if fmt == "torchscript" else ".onnx"
    out = Path(str(cfg.output)) if cfg.get("output") else ckpt.with_suffix(suffix)
    size = cfg.get("image_size") or model.preprocess.get("image_size") or 128
    path = export_model(model, out, fmt, int(size))
    what = EXPORTED[model.task_kind]
    fixed = getattr(model.model, "export_batch_size", None)
    if fixed:
        what += f"; batch fixed at {fixed} ({type(model.model).__name__} loops over images), size dynamic"
    log.info("exported %s to %s (%s): %s", ckpt.name, path, fmt, what)
    print(path)
    return path
