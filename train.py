"""Train a segmentation model: ``python train.py [group=option ...] [key=value ...]`` (see conf/train.yaml)."""

import os
from pathlib import Path

import hydra
from omegaconf import DictConfig

os.environ.setdefault("AUTOTIMM_ROOT", str(Path(__file__).resolve().parent))


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from autotimm.cli.train import run

    return run(cfg)  # the optimized metric, for sweepers (Optuna); a failed multirun job is recorded, not fatal


if __name__ == "__main__":
    main()
