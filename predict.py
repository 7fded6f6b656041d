"""Predict with a checkpoint: ``python predict.py ckpt_path=... input=<image or folder> output=<folder>``.

Semantic: ``<stem>_mask.png`` (palette PNG of class ids) and ``<stem>_overlay.png``; ``tta.mode=slide
tta.crop_size=512`` for sliding-window inference on large images, ``tta.flip=true`` for flip test-time augmentation
(the schema eval.py uses). Instance: ``<stem>_overlay.png`` (boxes and masks) and ``results.json`` (COCO results
format) of the detections above ``score_thresh`` (0.5 by default).
"""

import os
from pathlib import Path

import hydra
from omegaconf import DictConfig

os.environ.setdefault("AUTOTIMM_ROOT", str(Path(__file__).resolve().parent))


@hydra.main(version_base="1.3", config_path="conf", config_name="predict")
def main(cfg: DictConfig) -> None:
    from autotimm.cli.predict import predict

    predict(cfg)


if __name__ == "__main__":
    main()
