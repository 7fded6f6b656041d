"""Reliability: non-finite losses, failing sweep jobs, bad COCO annotations, corrupt images."""

import json

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from autotimm import FeatureBackboneConfig, SemanticSegmentor

TINY = FeatureBackboneConfig("test_resnet", pretrained=False)


class NaNOnSteps(torch.nn.Module):
    """A loss that is NaN on the given calls and a plain CE otherwise."""

    def __init__(self, nan_calls):
        super().__init__()
        self.nan_calls, self.calls = set(nan_calls), 0

    def forward(self, logits, target):
        self.calls += 1
        loss = torch.nn.functional.cross_entropy(logits, target)
        return loss * float("nan") if self.calls in self.nan_calls else loss


def loader(n=8):
    data = [{"image": torch.randn(3, 64, 64), "mask": torch.randint(0, 2, (64, 64))} for _ in range(n)]
    return DataLoader(data, batch_size=2, collate_fn=lambda b: {"image": torch.stack([x["image"] for x in b]),
                                                               "mask": torch.stack([x["mask"] for x in b])})


def fit(model, steps):
    trainer = pl.Trainer(max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(model, loader())
    return trainer


def test_nonfinite_loss_skips_the_step_and_keeps_weights_finite():
    model = SemanticSegmentor(TINY, num_classes=2, scheduler=None)
    model.criterion = NaNOnSteps({1})
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.warns(UserWarning, match=r"non-finite training loss \(nan\) at step 0: step skipped"):
        fit(model, 1)
    assert model._nonfinite_total == 1
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # the NaN never reached the weights
    model.criterion = NaNOnSteps({2})
    with pytest.warns(UserWarning, match="step skipped"):
        fit(model, 3)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert not all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # finite steps did train


def test_nonfinite_losses_in_a_row_stop_the_run():
    model = SemanticSegmentor(TINY, num_classes=2, scheduler=None)
    model.max_nonfinite_steps = 3
    model.criterion = NaNOnSteps(range(1, 100))
    with pytest.raises(RuntimeError, match="3 consecutive non-finite training losses"), pytest.warns(UserWarning):
        fit(model, 10)


@pytest.mark.slow
def test_failing_multirun_job_is_recorded_and_the_others_finish(tmp_path, shapes_root):
    from test_cli import run

    run("train.py", "-m", f"paths.log_dir={tmp_path}/outputs", f"dataset.data_dir={shapes_root}",
        "dataset.num_train=24", "dataset.num_val=8", "dataset.source_size=64", "dataset.seed=3",
        "dataset.image_size=64", "dataset.batch_size=8", "dataset.num_workers=0", "backbone=test_resnet",
        "trainer.max_epochs=1", "task_name=sweep", "loss.ce_weight=0", "loss.dice_weight=0,1.0")
    sweep = next((tmp_path / "outputs" / "sweep" / "multiruns").iterdir())
    failed = json.loads((sweep / "0" / "metrics.json").read_text())
    done = json.loads((sweep / "1" / "metrics.json").read_text())
    assert failed["status"] == "failed" and "ce_weight and dice_weight are both 0" in failed["error"]
    assert done["status"] == "completed" and 0.0 <= done["val/miou"] <= 1.0


# ------------------------------------------------------------------------------------------------ bad COCO files
def valid_coco(root):
    from test_instance import write_coco

    write_coco(root, "val")
    path = root / "annotations" / "instances_val2017.json"
    return path, json.loads(path.read_text())


def mutate_dup_image(d):
    d["images"].append(dict(d["images"][0]))


def mutate_missing_image(d):
    d["annotations"][0]["image_id"] = 999


def mutate_unknown_category(d):
    d["annotations"][0]["category_id"] = 5


def mutate_short_polygon(d):
    d["annotations"][0]["segmentation"] = [[0, 0, 10, 0]]


def mutate_zero_box(d):
    d["annotations"][0]["bbox"] = [3, 3, 0, 4]


def mutate_outside_box(d):
    d["annotations"][0]["bbox"] = [50, 30, 40, 40]


def mutate_escape(d):
    d["images"][0]["file_name"] = "../../etc/passwd"


def mutate_missing_file(d):
    d["images"][0]["file_name"] = "nope.png"


BAD_COCO = [
    (mutate_dup_image, ValueError, r"instances_val2017\.json: duplicate image ids \[10\]"),
    (mutate_missing_image, ValueError, r"annotation id 1 refers to image id 999, which is not in 'images'"),
    (mutate_unknown_category, ValueError, r"annotation id 1 has category_id 5, which is not in 'categories'"),
    (mutate_short_polygon, ValueError, r"annotation id 1: a polygon has 2 point\(s\); a polygon needs at least 3"),
    (mutate_zero_box, ValueError, r"annotation id 1: zero-area box \[3, 3, 0, 4\]"),
    (mutate_outside_box, ValueError,
     r"annotation id 1: box \[50, 30, 40, 40\] lies outside its image id 10 \(60x40\)"),
    (mutate_escape, ValueError, r"file_name '\.\./\.\./etc/passwd' points outside the image folder"),
    (mutate_missing_file, FileNotFoundError,
     r"image file\(s\) missing from .*val2017: \['nope\.png \(image id 10\)'\]"),
]


@pytest.mark.parametrize("mutate, exc, match", BAD_COCO, ids=[m.__name__[7:] for m, _, _ in BAD_COCO])
@pytest.mark.parametrize("task", ["semantic", "instance"])
def test_bad_coco_annotations_name_the_file_and_the_problem(tmp_path, mutate, exc, match, task):
    from autotimm import InstanceSegmentationDataModule, SegmentationDataModule

    path, data = valid_coco(tmp_path)
    mutate(data)
    path.write_text(json.dumps(data))
    if task == "semantic":
        dm = SegmentationDataModule(tmp_path, format="coco", num_workers=0, val_split="val")
        if mutate is mutate_missing_file:
            match = r"image id 10 file .*nope\.png does not exist"
    else:
        dm = InstanceSegmentationDataModule(tmp_path, num_workers=0)
    with pytest.raises(exc, match=match):
        dm.setup("validate")


# ------------------------------------------------------------------------------------------------ bad image files
def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


def test_truncated_image_errors_by_default_and_is_skipped_on_request(tmp_path, shapes_root, caplog):
    import shutil

    from autotimm import SegmentationDataModule

    root = tmp_path / "shapes"
    shutil.copytree(shapes_root, root)
    bad = root / "val" / "images" / "00003.png"
    truncate(bad)
    dm = SegmentationDataModule(root, format="png", image_size=64, num_workers=0, num_classes=5)
    dm.setup("validate")
    with pytest.raises(ValueError, match=r"image .*val/images/00003\.png: cannot decode it"):
        dm.val_dataset[3]
    dm = SegmentationDataModule(root, format="png", image_size=64, num_workers=0, num_classes=5, skip_corrupt=True)
    with caplog.at_level("WARNING"):
        dm.setup("validate")
    assert len(dm.val_dataset) == 7 and dm.skipped_corrupt == [str(bad)]
    assert "skipped 1 corrupt image(s)" in caplog.text and "00003.png" in caplog.text
    assert all(dm.val_dataset[i]["image"].shape == (3, 64, 64) for i in range(7))


def test_truncated_image_instance_skip(tmp_path, shapes_root):
    import shutil

    from autotimm import InstanceSegmentationDataModule

    root = tmp_path / "shapes"
    shutil.copytree(shapes_root, root)
    truncate(root / "train" / "images" / "00001.png")
    dm = InstanceSegmentationDataModule(root, image_size=64, num_workers=0, skip_corrupt=True)
    dm.setup("fit")
    assert len(dm.train_dataset) == 23 and dm.skipped_corrupt[0].endswith("00001.png")


def test_mask_problems_name_the_files(tmp_path):
    import numpy as np
    from PIL import Image

    from autotimm import SegmentationDataModule

    for split in ("train", "val"):
        (tmp_path / split / "images").mkdir(parents=True)
        (tmp_path / split / "masks").mkdir(parents=True)
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / split / "images" / "a.png")
        Image.fromarray(np.zeros((8, 9), np.uint8)).save(tmp_path / split / "masks" / "a.png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "val" / "masks" / "orphan.png")
    dm = SegmentationDataModule(tmp_path, format="png", image_size=32, num_workers=0)
    with pytest.raises(ValueError, match=r"1 mask\(s\) in .*val/masks have no image .*\['orphan\.png'\]"):
        dm.setup("validate")
    dm = SegmentationDataModule(tmp_path, format="png", image_size=32, num_workers=0, val_split="train")
    dm.setup("validate")
    with pytest.raises(ValueError, match=r"mask .*train/masks/a\.png is 9x8 \(WxH\) but its image .*a\.png is 8x8"):
        dm.val_dataset[0]


@pytest.mark.parametrize("fmt, looked_for", [
    ("voc", r"looked for JPEGImages/ and SegmentationClass/ in .*VOCdevkit/VOC2012, .*VOC2012 and"),
    ("cityscapes", r"expected .*leftImg8bit/val \(layout leftImg8bit/<split>/<city>/"),
    ("coco", r"no split 'val' in .*; looked for .*val2017/ \+ .*instances_val2017\.json or"),
    ("png", r"expected split folder .*val with images/ and masks/ inside"),
])
def test_wrong_layout_says_what_was_looked_for(tmp_path, fmt, looked_for):
    from autotimm import SegmentationDataModule
    from autotimm.data import DatasetLayoutError

    (tmp_path / "something_else").mkdir()
    with pytest.raises(DatasetLayoutError, match=looked_for):
        SegmentationDataModule(tmp_path, format=fmt, num_workers=0).setup("validate")


# ------------------------------------------------------------------------------------------------ process faults
@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_gives_the_same_number_of_steps(tmp_path, shapes_root):
    import os
    import signal
    import subprocess
    import sys
    import time

    from test_cli import ROOT, run

    epochs, steps_per_epoch = 6, 24 // 4
    common = [f"dataset.data_dir={shapes_root}", "dataset.num_train=24", "dataset.num_val=8",
              "dataset.source_size=64", "dataset.seed=3", "dataset.image_size=64", "dataset.batch_size=4",
              "dataset.num_workers=0", "backbone=test_resnet", f"trainer.max_epochs={epochs}"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "WANDB_MODE": "offline"}
    proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), f"paths.log_dir={tmp_path}/killed", *common],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    last = None
    while time.time() < deadline and proc.poll() is None:
        found = list((tmp_path / "killed").glob("train/runs/*/checkpoints/last.ckpt"))
        if found:
            last = found[0]
            break
        time.sleep(0.05)
    assert last is not None and proc.poll() is None, "the run ended before it could be killed"
    time.sleep(0.3)  # into the next epoch
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    state = torch.load(last, map_location="cpu", weights_only=True)  # intact (atomic writes)
    assert 0 < state["global_step"] < epochs * steps_per_epoch

    run("train.py", f"paths.log_dir={tmp_path}/resumed", *common, f"ckpt_path={last}")
    resumed = json.loads(next((tmp_path / "resumed").glob("train/runs/*/metrics.json")).read_text())
    assert resumed["status"] == "completed"
    assert resumed["global_step"] == epochs * steps_per_epoch  # as many optimizer steps as an uninterrupted run


# ------------------------------------------------------------------------------------------------ untrusted files
class RunsCode:
    def __reduce__(self):
        return (print, ("this would have run",))


@pytest.mark.slow
def test_checkpoint_with_code_is_refused(tmp_path, shapes_root):
    import subprocess
    import sys

    from test_cli import ROOT

    model = SemanticSegmentor(TINY, num_classes=5)
    ckpt = {"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams),
            "pytorch-lightning_version": pl.__version__, "evil": RunsCode()}
    path = tmp_path / "evil.ckpt"
    torch.save(ckpt, path)
    common = [f"paths.log_dir={tmp_path}/outputs", f"dataset.data_dir={shapes_root}", "dataset.num_train=24",
              "dataset.num_val=8", "dataset.source_size=64", "dataset.seed=3", "dataset.num_workers=0",
              "backbone=test_resnet", f"ckpt_path={path}"]
    for script in ("eval.py", "train.py"):
        proc = subprocess.run([sys.executable, str(ROOT / script), *common], cwd=ROOT, capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode != 0
        out = proc.stdout + proc.stderr
        assert "refusing to load it: it holds Python objects beyond tensors and plain data" in out, out[-2000:]
        assert "this would have run" not in out


def test_voc_split_entry_cannot_escape_the_dataset(tmp_path):
    from autotimm import SegmentationDataModule

    base = tmp_path / "VOC2012"
    for d in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (base / d).mkdir(parents=True)
    (base / "ImageSets" / "Segmentation" / "val.txt").write_text("../../../etc/hostname\n")
    with pytest.raises(ValueError, match=r"val\.txt entry '\.\./\.\./\.\./etc/hostname'.*points outside the image"):
        SegmentationDataModule(tmp_path, format="voc", num_workers=0).setup("validate")


@pytest.mark.parametrize("make, match", [
    (lambda: __import__("autotimm").SegmentationDataModule("d", format="tiff"),
     r"format: unknown 'tiff'; valid: \['ade20k', 'camvid', 'cityscapes', 'coco', 'png', 'voc'\]"),
    (lambda: __import__("autotimm").SegmentationDataModule("d", augmentation_preset="extreme"),
     r"augmentation_preset: unknown 'extreme'; valid: \['light', 'default', 'strong'\]"),
    (lambda: __import__("autotimm").InstanceSegmentationDataModule("d", augmentation_preset="extreme"),
     r"augmentation_preset: unknown 'extreme'; valid: \['light', 'default', 'strong'\]"),
    (lambda: __import__("autotimm").InstanceSegmentor(TINY, num_classes=3, mask_size=0),
     r"mask_size must be an integer >= 1, got 0"),
    (lambda: __import__("autotimm").InstanceSegmentor(TINY, num_classes=0), r"num_classes must be an integer >= 1"),
    (lambda: __import__("autotimm").InstanceSegmentor(TINY, num_classes=3, optimizer="lion"),
     r"optimizer: unknown value 'lion'; valid: \['adam', 'adamw', 'rmsprop', 'sgd'\]"),
    (lambda: __import__("autotimm").FeatureBackboneConfig and SemanticSegmentor("not_a_model", num_classes=3),
     r"backbone.model_name: unknown timm model 'not_a_model'"),
])
def test_invalid_configuration_lists_the_valid_values(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_image_size_not_usable_by_the_backbone():
    from autotimm.cli.common import check_image_size

    model = SemanticSegmentor(TINY, num_classes=2, head_type="fcn")  # native stride 32
    with pytest.raises(ValueError, match=r"dataset.image_size=16 is smaller than backbone test_resnet's output "
                                         r"stride 32; use at least 32"):
        check_image_size(model, 16)
    check_image_size(model, 64)  # fine
    dilated = SemanticSegmentor(TINY, num_classes=2)  # DeepLabV3+: output stride 16 (auto)
    check_image_size(dilated, 16)
    with pytest.raises(ValueError, match=r"stride 16; use at least 16"):
        check_image_size(dilated, 8)
    maxvit = SemanticSegmentor(FeatureBackboneConfig("test_maxvit", pretrained=False, img_size=160), num_classes=2)
    with pytest.raises(ValueError, match=r"dataset.image_size=128 is not usable by backbone test_maxvit: .*window"):
        check_image_size(maxvit, 128)


def test_checkpoint_write_interrupted_midway_keeps_the_previous_file(tmp_path, monkeypatch):
    from autotimm.training import AutoTrainer
    from autotimm.training.checkpoint_io import AtomicCheckpointIO

    trainer = AutoTrainer(logger=False, enable_progress_bar=False)
    assert any(isinstance(p, AtomicCheckpointIO) for p in [trainer.strategy.checkpoint_io])
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"step": 1, "w": torch.ones(1000)}, path)

    real_save = torch.save

    def dies_halfway(obj, f, *a, **k):
        f.write(b"partial bytes")
        raise KeyboardInterrupt  # the process is killed in the middle of writing

    monkeypatch.setattr(torch, "save", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"step": 2, "w": torch.zeros(1000)}, path)
    monkeypatch.setattr(torch, "save", real_save)
    state = torch.load(path, weights_only=True)  # the previous checkpoint, intact
    assert state["step"] == 1 and torch.equal(state["w"], torch.ones(1000))
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temp file left behind
