"""Export a checkpoint (``python export.py ckpt_path=... format=torchscript|onnx``)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from ..export import export_semantic
from ..tasks import InstanceSegmentor
from .common import log
from .predict import load_task


def export(cfg: DictConfig) -> Path:
    ckpt = Path(str(cfg.ckpt_path))
    if not ckpt.is_file():
        raise FileNotFoundError(f"ckpt_path: {ckpt} does not exist")
    fmt = str(cfg.format)
    model = load_task(ckpt)
    if isinstance(model, InstanceSegmentor):
        raise NotImplementedError("export: instance checkpoints cannot be exported yet (semantic only); use "
                                  "predict.py or InstanceSegmentor.predict for instance models")
    suffix = ".pt" if fmt == "torchscript" else ".onnx"
    out = Path(str(cfg.output)) if cfg.get("output") else ckpt.with_suffix(suffix)
    path = export_semantic(model, out, fmt, int(cfg.image_size))
    log.info("exported %s to %s (%s): normalised images [B,3,H,W] -> class ids [B,H,W]", ckpt.name, path, fmt)
    print(path)
    return path
