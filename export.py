"""Export a checkpoint: ``python export.py ckpt_path=... format=torchscript|onnx [output=...]``.

Semantic models export the whole pipeline: normalised images [B,3,H,W] -> class ids [B,H,W] at the input resolution
(dynamic batch and size). Instance export is not available yet.
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
