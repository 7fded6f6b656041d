"""Predict on an image or a folder with a checkpoint (``python predict.py ckpt_path=... input=... output=...``).

What runs is decided by the task kind the checkpoint records (``autotimm.tasks.load_task``): class maps for a
semantic model, detections for an instance model (above ``score_thresh``; ``auto``, the default, is the threshold a
``ScoreThresholdCalibration`` chose in training when the checkpoint holds one, else 0.5 for pictures, as detectron2's
demo; evaluation keeps the model's own low threshold, which AP needs)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from ..data.dataset import read_image
from ..data.formats.base import IMAGE_EXTS
from ..inference import coco_results, predict_instance, predict_semantic, save_instance, save_semantic, write_json
from ..models.base import POSTPROCESS_KEYS
from ..tasks import load_task as _load_task
from ..tta import as_tta
from .common import log, untrusted_checkpoint


def load_task(ckpt: Path, device: str = "cpu"):
    """The task a checkpoint holds (its recorded kind), loaded weights-only."""
    with untrusted_checkpoint(ckpt):
        return _load_task(ckpt, device)


def list_inputs(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTS and p.is_file())
        if files:
            return files
        raise FileNotFoundError(f"input: no images ({', '.join(IMAGE_EXTS)}) under {path}")
    raise FileNotFoundError(f"input: {path} does not exist")


def _semantic(model, image: np.ndarray, cfg: DictConfig, tta, out_dir: Path, stem: str) -> list[dict]:
    classes = predict_semantic(model, image, cfg.get("image_size"), tta)
    save_semantic(image, classes, out_dir, stem, model.num_classes)
    return []


def _instance(model, image: np.ndarray, cfg: DictConfig, tta, out_dir: Path, stem: str) -> list[dict]:
    pred = predict_instance(model, image, cfg.get("image_size"), tta)
    save_instance(image, pred, out_dir, stem)
    return coco_results(pred, stem)


PICTURE_SCORE_THRESH = 0.5  # score_thresh=auto without a calibrated threshold: detectron2's demo default

# task kind -> (predict and write one image, whether it writes COCO results.json)
RUNNERS = {"semantic": (_semantic, False), "instance": (_instance, True)}


def predict(cfg: DictConfig) -> dict[str, Any]:
    ckpt = Path(str(cfg.ckpt_path))
    if not ckpt.is_file():
        raise FileNotFoundError(f"ckpt_path: {ckpt} does not exist")
    device = "cuda" if cfg.get("device", "auto") == "auto" and torch.cuda.is_available() else \
        ("cpu" if cfg.get("device", "auto") == "auto" else str(cfg.device))
    model = load_task(ckpt, device)
    run_one, writes_results = RUNNERS[model.task_kind]
    tta = as_tta(OmegaConf.to_container(cfg.tta, resolve=True)) if cfg.get("tta") else None
    settings = {k: cfg.get(k) for k in POSTPROCESS_KEYS if cfg.get(k) is not None}
    if settings.get("score_thresh") == "auto":  # a threshold calibrated in training (checkpoint), else pictures' 0.5
        calibrated = getattr(model, "calibrated_score_thresh", None)
        settings["score_thresh"] = PICTURE_SCORE_THRESH if calibrated is None else float(calibrated)
        log.info("score_thresh=auto: %s", f"{calibrated:.2f}, calibrated in training (checkpoint)"
                 if calibrated is not None else f"{PICTURE_SCORE_THRESH} (the checkpoint holds no calibrated one)")
    thresh = settings.get("score_thresh")
    if thresh is not None and (isinstance(thresh, str) or not 0.0 <= float(thresh) <= 1.0):
        raise ValueError(f"score_thresh: a number in [0, 1] or 'auto', got {thresh!r}")
    if settings and model.task_kind == "instance":  # post-processing lives on the model: change it there
        model.model.set_postprocess(**settings)
        log.info("post-processing: %s", model.model.postprocess)
    inputs = list_inputs(Path(str(cfg.input)))
    out_dir = Path(str(cfg.output))
    out_dir.mkdir(parents=True, exist_ok=True)
    results: list[dict] = []
    for path in inputs:  # one image at a time: sizes differ
        results += run_one(model, read_image(path), cfg, tta, out_dir, path.stem)
    if writes_results:
        write_json(out_dir / "results.json", results)
    log.info("wrote predictions for %d image(s) to %s", len(inputs), out_dir)
    return {"images": len(inputs), "output": str(out_dir), "detections": len(results)}
