"""Predict on an image or a folder with a checkpoint (``python predict.py ckpt_path=... input=... output=...``)."""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig

from ..data.dataset import read_image
from ..data.formats.base import IMAGE_EXTS
from ..inference import coco_results, predict_instance, predict_semantic, save_instance, save_semantic, write_json
from ..tasks import InstanceSegmentor, SemanticSegmentor
from .common import log, untrusted_checkpoint


def load_task(ckpt: Path, device: str = "cpu"):
    """The task a checkpoint holds (semantic or instance, told by its hyper-parameters), loaded weights-only."""
    with untrusted_checkpoint(ckpt):
        hparams = torch.load(ckpt, map_location="cpu", weights_only=True).get("hyper_parameters", {})
        cls = InstanceSegmentor if "mask_size" in hparams else SemanticSegmentor
        return cls.load_from_checkpoint(str(ckpt), map_location=device, weights_only=True).eval()


def list_inputs(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTS and p.is_file())
        if files:
            return files
        raise FileNotFoundError(f"input: no images ({', '.join(IMAGE_EXTS)}) under {path}")
    raise FileNotFoundError(f"input: {path} does not exist")


def predict(cfg: DictConfig) -> dict:
    ckpt = Path(str(cfg.ckpt_path))
    if not ckpt.is_file():
        raise FileNotFoundError(f"ckpt_path: {ckpt} does not exist")
    device = "cuda" if cfg.get("device", "auto") == "auto" and torch.cuda.is_available() else \
        ("cpu" if cfg.get("device", "auto") == "auto" else str(cfg.device))
    model = load_task(ckpt, device)
    if isinstance(model, InstanceSegmentor) and cfg.get("score_thresh") is not None:
        model.score_thresh = float(cfg.score_thresh)
    inputs = list_inputs(Path(str(cfg.input)))
    out_dir = Path(str(cfg.output))
    out_dir.mkdir(parents=True, exist_ok=True)
    results, written = [], 0
    for path in inputs:  # one image at a time: sizes differ
        image = read_image(path)
        stem = path.stem
        if isinstance(model, InstanceSegmentor):
            pred = predict_instance(model, image, cfg.get("image_size"))
            save_instance(image, pred, out_dir, stem)
            results += coco_results(pred, stem)
        else:
            classes = predict_semantic(model, image, cfg.get("image_size"), cfg.get("tile_size"),
                                       float(cfg.get("overlap", 0.25)), bool(cfg.get("tta_hflip", False)),
                                       list(cfg.get("tta_scales") or [1.0]))
            save_semantic(image, classes, out_dir, stem, model.num_classes)
        written += 1
    if isinstance(model, InstanceSegmentor):
        write_json(out_dir / "results.json", results)
    log.info("wrote predictions for %d image(s) to %s", written, out_dir)
    return {"images": written, "output": str(out_dir)}
