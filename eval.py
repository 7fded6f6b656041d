"""Test a checkpoint: ``python eval.py ckpt_path=outputs/train/runs/<time>/checkpoints/last.ckpt``."""

import os
from pathlib import Path

import hydra
from omegaconf import DictConfig

os.environ.setdefault("AUTOTIMM_ROOT", str(Path(__file__).resolve().parent))


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    from autotimm.cli.eval import evaluate

    evaluate(cfg)


if __name__ == "__main__":
    main()
