"""Export a checkpoint: ``python export.py ckpt_path=... format=torchscript|onnx [output=...]``.

The whole pipeline, dynamic batch and size: semantic -> class ids [B,H,W] at the input resolution; instance ->
image_index, boxes, scores, labels, masks after NMS (flat over the batch). See autotimm.export.
"""

import os
from pathlib import Path

import hydra
from omegaconf import DictConfig

os.environ.setdefault("AUTOTIMM_ROOT", str(Path(__file__).resolve().parent))


@hydra.main(version_base="1.3", config_path="conf", config_name="export")
def main(cfg: DictConfig) -> None:
    from autotimm.cli.export import export

    export(cfg)


if __name__ == "__main__":
    main()
