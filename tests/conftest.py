import os
import warnings
from pathlib import Path

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
warnings.filterwarnings("ignore", ".*does not have many workers.*")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shapes_root(tmp_path_factory) -> Path:
    """A small generated shapes dataset shared by the tests."""
    from autotimm.data import generate_shapes

    return generate_shapes(tmp_path_factory.mktemp("shapes"), num_train=24, num_val=8, image_size=64, seed=3)
