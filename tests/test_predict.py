"""predict.py: sliding-window exactness, semantic and instance outputs on image files."""

import json

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from PIL import Image

from autotimm import FeatureBackboneConfig, InstanceSegmentor, SemanticSegmentor
from autotimm.inference import sliding_window_logits

TINY = FeatureBackboneConfig("test_resnet", pretrained=False)


@pytest.mark.parametrize("tile, overlap, size", [(32, 0.25, (70, 101)), (16, 0.5, (33, 33)), (64, 0.0, (64, 128))])
def test_sliding_window_equals_whole_image_for_a_per_pixel_model(tile, overlap, size):
    conv = torch.nn.Conv2d(3, 5, 1)
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        assert torch.allclose(sliding_window_logits(conv, x, tile, overlap), conv(x), atol=1e-5)


def save(model, path):
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(path)


def images(folder):
    folder.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (100, 150, 3), dtype=np.uint8)).save(folder / "wide.png")
    Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8), mode="L").save(folder / "gray.jpg")
    return {"wide": (100, 150), "gray": (64, 64)}


@pytest.mark.slow
def test_predict_semantic_folder_with_tiles_and_flip(tmp_path):
    from test_cli import run

    save(SemanticSegmentor(TINY, num_classes=4), tmp_path / "sem.ckpt")
    sizes = images(tmp_path / "in")
    run("predict.py", f"ckpt_path={tmp_path / 'sem.ckpt'}", f"input={tmp_path / 'in'}", f"output={tmp_path / 'out'}",
        "tta.mode=slide", "tta.crop_size=64", "tta.stride=48", "tta.flip=true", f"paths.log_dir={tmp_path}/logs")
    for stem, (h, w) in sizes.items():
        mask = Image.open(tmp_path / "out" / f"{stem}_mask.png")
        assert mask.mode == "P" and mask.size == (w, h)  # class ids at the image's own size
        assert set(np.unique(np.asarray(mask)).tolist()) <= {0, 1, 2, 3}
        assert Image.open(tmp_path / "out" / f"{stem}_overlay.png").size == (w, h)


@pytest.mark.slow
def test_predict_instance_writes_overlays_and_coco_results(tmp_path):
    from test_cli import run

    save(InstanceSegmentor(TINY, num_classes=3, fpn_channels=32, head_num_convs=1, category_ids=[3, 7, 90],
                           max_detections_per_image=5), tmp_path / "inst.ckpt")
    sizes = images(tmp_path / "in")
    run("predict.py", f"ckpt_path={tmp_path / 'inst.ckpt'}", f"input={tmp_path / 'in'}",
        f"output={tmp_path / 'out'}", "score_thresh=0.0", f"paths.log_dir={tmp_path}/logs")
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert {r["image_id"] for r in results} == set(sizes)
    for r in results:
        h, w = sizes[r["image_id"]]
        assert r["category_id"] in (3, 7, 90) and 0 <= r["score"] <= 1 and len(r["bbox"]) == 4
        assert r["segmentation"]["size"] == [h, w]
    for stem, (h, w) in sizes.items():
        assert Image.open(tmp_path / "out" / f"{stem}_overlay.png").size == (w, h)

    # score_thresh is applied by the model: a threshold at the median score keeps only the detections above it
    scores = sorted(r["score"] for r in results)
    thresh = scores[len(scores) // 2]
    run("predict.py", f"ckpt_path={tmp_path / 'inst.ckpt'}", f"input={tmp_path / 'in'}",
        f"output={tmp_path / 'high'}", f"score_thresh={thresh}", f"paths.log_dir={tmp_path}/logs")
    high = json.loads((tmp_path / "high" / "results.json").read_text())
    assert 0 < len(high) < len(results) and all(r["score"] > thresh - 1e-5 for r in high)
    assert sum(s > thresh + 1e-5 for s in scores) <= len(high) <= sum(s > thresh - 1e-5 for s in scores)
