"""Predict with a checkpoint: ``python predict.py ckpt_path=... input=<image or folder> output=<folder>``.

Semantic: ``<stem>_mask.png`` (palette PNG of class ids) and ``<stem>_overlay.png``; ``tile_size=512 overlap=0.25``
for sliding-window inference on large images, ``tta_hflip=true`` for flip test-time augmentation.
Instance: ``<stem>_overlay.png`` (boxes and masks) and ``results.json`` (COCO results format).
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
