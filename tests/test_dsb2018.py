"""Real instance data: the instance formats (DSB2018, instance-id PNGs, a user's own), their named errors, the compact
id-map path through augmentation, and the challenge's matching score."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from autotimm import InstanceSegmentationDataModule
from autotimm.data.instance import id_map_boxes, map_to_masks, mask_extents
from autotimm.metrics import MatchingAccuracy

DSB = Path(__file__).resolve().parents[2] / "shared" / "data" / "dsb2018"


# ------------------------------------------------------------------------------------------------ the score
def square(h, w, y0, y1, x0, x1):
    m = torch.zeros(h, w, dtype=torch.bool)
    m[y0:y1, x0:x1] = True
    return m


def score(preds, gts, scores=None):
    metric = MatchingAccuracy()
    p = torch.stack(preds) if preds else torch.zeros(0, 20, 20, dtype=torch.bool)
    s = torch.tensor(scores if scores is not None else [0.9] * len(preds), dtype=torch.float32)
    metric.update([{"masks": p, "scores": s}], [{"masks": torch.stack(gts), "iscrowd": torch.zeros(len(gts))}])
    return {k: float(v) for k, v in metric.compute().items()}


def test_matching_score_by_hand():
    a, b = square(20, 20, 0, 10, 0, 10), square(20, 20, 0, 10, 10, 20)  # two touching 10x10 nuclei
    perfect = score([a, b], [a, b])
    assert perfect["dsb_score"] == 1 and perfect["match_acc_50"] == 1 and perfect["match_tp_50"] == 2
    # one merged pair: the detection covers both; IoU 0.5 with each, not > 0.5: 0 TP, 1 FP, 2 FN everywhere
    merged = score([a | b], [a, b])
    assert merged["dsb_score"] == 0 and (merged["match_tp_50"], merged["match_fp_50"], merged["match_fn_50"]) == \
        (0, 1, 2)
    # one missed: TP 1, FN 1 -> 1/2 at every threshold
    missed = score([a], [a, b])
    assert missed["dsb_score"] == pytest.approx(0.5) and missed["match_acc_50"] == pytest.approx(0.5)
    # one extra (a second detection elsewhere, and a duplicate of a): TP 1, FP 2 -> 1/3
    extra = score([a, square(20, 20, 12, 18, 12, 18), a], [a])
    assert extra["dsb_score"] == pytest.approx(1 / 3) and (extra["match_tp_50"], extra["match_fp_50"]) == (1, 2)
    # a partial overlap: IoU 70/100 = 0.7 counts at t = 0.5, 0.55, 0.6, 0.65 (4 of 10), not at 0.7 (IoU > t)
    partial = score([square(20, 20, 0, 7, 0, 10)], [a])
    assert partial["match_acc_50"] == 1 and partial["dsb_score"] == pytest.approx(0.4)
    # below score_thresh (0.5) a detection is not in the segmentation
    assert score([a, b], [a, b], scores=[0.9, 0.3])["dsb_score"] == pytest.approx(0.5)


def test_matching_score_averages_over_images():
    a, b = square(20, 20, 0, 10, 0, 10), square(20, 20, 0, 10, 10, 20)
    metric = MatchingAccuracy()
    one = {"scores": torch.ones(1), "masks": a[None]}
    metric.update([one, one], [{"masks": a[None]}, {"masks": torch.stack([a, b])}])  # 1.0 and 0.5
    out = metric.compute()
    assert float(out["dsb_score"]) == pytest.approx(0.75) and float(out["match_acc_50"]) == pytest.approx(0.75)
    assert (float(out["match_tp_50"]), float(out["match_fn_50"])) == (2, 1)


# ------------------------------------------------------------------------------------------------ id maps
def test_id_map_boxes_equal_mask_extents():
    rng = np.random.default_rng(0)
    id_map = np.zeros((40, 50), np.uint16)
    for k in range(1, 8):
        y, x = rng.integers(0, 35, 2)
        id_map[y: y + rng.integers(1, 6), x: x + rng.integers(1, 9)] = k
    ids = np.array([3, 1, 2, 4, 5, 6, 7, 9], np.uint16)  # 9 is absent
    boxes, present = id_map_boxes(id_map, ids)
    want, nonempty = mask_extents(map_to_masks(id_map, ids))
    assert np.array_equal(present, nonempty) and not present[-1]
    assert np.array_equal(boxes[present], want[present])


# ------------------------------------------------------------------------------------------------ dsb2018 format
def write_dsb(root, images=(("a", 2, 32), ("b", 1, 24)), split=("a", "b"), bad=None):
    """A DSB2018-layout tree: per image an RGBA image and one PNG per square nucleus (255 inside)."""
    base = root / "stage1_train"
    for name, n, size in images:
        (base / name / "images").mkdir(parents=True)
        (base / name / "masks").mkdir()
        rgba = np.full((size, size, 4), 255, np.uint8)
        rgba[..., :3] = np.arange(size, dtype=np.uint8)[None, :, None]
        Image.fromarray(rgba, mode="RGBA").save(base / name / "images" / f"{name}.png")
        for k in range(n):
            m = np.zeros((size, size), np.uint8)
            m[2 + 9 * k: 8 + 9 * k, 3:10] = 255
            if bad == "size" and k == 1:
                m = np.zeros((size + 1, size), np.uint8)
            if bad == "empty" and k == 1:
                m[:] = 0
            if bad == "overlap" and k == 1:
                m[2:8, 3:10] = 255
            img = Image.fromarray(m)
            if bad == "16bit" and k == 1:
                img = Image.fromarray(m.astype(np.uint16) * 257)
            img.save(base / name / "masks" / f"m{k}.png")
    (root / "train.txt").write_text("\n".join(split) + "\n")
    return root


def test_dsb2018_generated_tree(tmp_path):
    root = write_dsb(tmp_path / "d")
    dm = InstanceSegmentationDataModule(root, format="dsb2018", image_size=32, batch_size=2, num_workers=0,
                                        augmentation_preset="light", val_split="train")
    dm.setup("fit")
    assert (dm.class_names, dm.category_ids) == (["nucleus"], [0]) and len(dm.train_dataset) == 2
    item = dm.val_dataset[0]  # eval pipeline: exact
    assert item["orig_target"]["masks"].shape == (2, 32, 32) and item["orig_target"]["labels"].tolist() == [0, 0]
    assert item["orig_target"]["boxes"].tolist() == [[3, 2, 10, 8], [3, 11, 10, 17]]
    assert item["image"].shape == (3, 32, 32) and item["target"]["masks"].shape == (2, 32, 32)
    train = dm.train_dataset[1]["target"]
    assert len(train["labels"]) == 1 and train["masks"].dtype == torch.uint8
    # class_map: one class per image
    dm = InstanceSegmentationDataModule(root, format="dsb2018", image_size=32, batch_size=2, num_workers=0,
                                        val_split="train", format_options={"class_map": {"a": "fluo", "b": "tissue"}})
    dm.setup("fit")
    assert dm.class_names == ["fluo", "tissue"] and dm.train_dataset.split.read_instances(
        dm.train_dataset.samples[1], 24, 24).labels.tolist() == [1]


@pytest.mark.parametrize("bad, match", [
    ("size", r"mask .*b?/masks/m1.png: 32x33 but its image is 32x32"),
    ("empty", r"mask .*/masks/m1.png: empty"),
    ("overlap", r"mask .*/masks/m1.png: overlaps mask m0.png in 42 pixel\(s\)"),
    ("16bit", r"mask .*/masks/m1.png: expected an 8-bit single-channel PNG .* \(16-bit\)"),
])
def test_dsb2018_bad_masks_are_named_errors_or_counted_skips(tmp_path, bad, match, caplog):
    root = write_dsb(tmp_path / "d", bad=bad)
    dm = InstanceSegmentationDataModule(root, format="dsb2018", image_size=32, batch_size=2, num_workers=0,
                                        val_split="train")
    with pytest.raises(ValueError, match=match):
        dm.setup("fit")  # preloaded (the default): the masks are read at set-up
    dm = InstanceSegmentationDataModule(root, format="dsb2018", image_size=32, batch_size=2, num_workers=0,
                                        val_split="train", format_options={"preload": False})
    dm.setup("fit")
    with pytest.raises(ValueError, match=match):
        dm.val_dataset[0]  # read when first needed
    dm = InstanceSegmentationDataModule(root, format="dsb2018", image_size=32, batch_size=2, num_workers=0,
                                        val_split="train", format_options={"skip_bad": True})
    dm.setup("fit")  # asked to skip: image a is left out, counted and logged
    assert [s.image_id for s in dm.train_dataset.samples] == ["b"]
    assert "skipped 1 of 2 images with bad masks" in caplog.text


def test_dsb2018_list_entries_and_overlap_policy(tmp_path):
    root = write_dsb(tmp_path / "d", split=("a", "b", "zz"))
    with pytest.raises(FileNotFoundError, match=r"train.txt lists 1 id\(s\) without a folder .*\['zz'\]"):
        InstanceSegmentationDataModule(root, format="dsb2018", image_size=32, num_workers=0).setup("fit")
    root = write_dsb(tmp_path / "o", bad="overlap")
    dm = InstanceSegmentationDataModule(root, format="dsb2018", image_size=32, batch_size=2, num_workers=0,
                                        val_split="train", format_options={"overlaps": "keep_first"})
    dm.setup("fit")
    masks = dm.val_dataset[0]["orig_target"]["masks"]
    assert masks[0].sum() == 42 and masks[1].sum() == 0 or (masks.sum(0) <= 1).all()  # no pixel in two masks


@pytest.mark.skipif(not DSB.is_dir(), reason="../shared/data/dsb2018 is not beside the checkout")
def test_dsb2018_real_files():
    """The real layout: RGBA images become RGB, masks become one id map per image with one instance per PNG."""
    dm = InstanceSegmentationDataModule(DSB, format="dsb2018", image_size=128, batch_size=2, num_workers=0,
                                        format_options={"overlaps": "keep_first", "preload": False})
    dm.setup("fit")
    assert (len(dm.train_dataset), len(dm.val_dataset)) == (464, 100)
    sample = dm.val_dataset.samples[0]
    n_png = len(list((DSB / "stage1_train" / sample.image_id / "masks").glob("*.png")))
    item = dm.val_dataset[0]
    target = item["orig_target"]
    assert len(target["masks"]) == n_png and target["masks"].shape[1:] == tuple(item["orig_size"].tolist())
    assert (target["masks"].sum(0) <= 1).all()  # instances do not overlap
    assert item["image"].shape == (3, 128, 128)


# ------------------------------------------------------------------------------------------------ instance_png
def write_instance_png(root, encoding="plain", bits=8):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        (root / split / "images").mkdir(parents=True)
        (root / split / "instances").mkdir()
        for i in range(2):
            pixels = rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / split / "images" / f"i{i}.jpg")
            m = np.zeros((30, 40), np.int32)
            if encoding == "plain":
                m[2:10, 2:10], m[12:20, 5:30] = 1, 2
            else:
                m[2:10, 2:10], m[12:20, 5:30], m[22:28, :] = 26001, 24002, 7  # car, person, road (no instance)
            img = Image.fromarray(m.astype(np.uint8)) if bits == 8 else Image.fromarray(m.astype(np.uint16))
            img.save(root / split / "instances" / f"i{i}.png")
    return root


def test_instance_png_plain_and_cityscapes_encodings(tmp_path):
    dm = InstanceSegmentationDataModule(write_instance_png(tmp_path / "p"), format="instance_png", image_size=40,
                                        num_workers=0)
    dm.setup("validate")
    t = dm.val_dataset[0]["orig_target"]
    assert dm.class_names == ["object"] and t["labels"].tolist() == [0, 0]
    assert t["masks"].sum((1, 2)).tolist() == [64, 200]
    dm = InstanceSegmentationDataModule(write_instance_png(tmp_path / "c", "cityscapes", bits=16),
                                        format="instance_png", image_size=40, num_workers=0,
                                        format_options={"encoding": "cityscapes"})
    dm.setup("validate")
    t = dm.val_dataset[0]["orig_target"]
    assert dm.class_names[:3] == ["person", "rider", "car"] and dm.category_ids[2] == 26
    assert sorted(t["labels"].tolist()) == [0, 2] and len(t["masks"]) == 2  # road (7) is no instance
    dm = InstanceSegmentationDataModule(tmp_path / "c", format="instance_png", image_size=40, num_workers=0)
    dm.setup("validate")
    with pytest.raises(ValueError, match=r"instance map .*i0.png: expected an 8-bit .* \(16/32-bit: use encoding "
                                         r"'cityscapes'"):
        dm.val_dataset[0]


def test_a_format_of_your_own_is_one_module(tmp_path, monkeypatch):
    """format=<dotted path>: a module with load_split, outside the package."""
    (tmp_path / "myformat.py").write_text('''
import numpy as np
import json
from pathlib import Path
from autotimm.data.instance_formats import InstanceSample, Instances, InstanceSplit

def load_split(root, split, radius=4):
    images = sorted((Path(root) / split).glob("*.png"))
    def read(sample, h, w):
        m = np.zeros((h, w), np.int32)
        m[:radius, :radius] = 1
        return Instances(labels=[0], crowd=[False], id_map=m, ids=[1])
    return InstanceSplit([InstanceSample(p, p.stem) for p in images], read, ["thing"], [5])
''')
    monkeypatch.syspath_prepend(str(tmp_path))
    for split in ("train", "val"):
        (tmp_path / "data" / split).mkdir(parents=True)
        Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "data" / split / "x.png")
    dm = InstanceSegmentationDataModule(tmp_path / "data", format="myformat", image_size=16, num_workers=0,
                                        format_options={"radius": 3})
    dm.setup("validate")
    assert dm.category_ids == [5] and dm.val_dataset[0]["orig_target"]["masks"].sum() == 9
    with pytest.raises(ValueError, match="format: unknown 'nope'"):
        InstanceSegmentationDataModule(tmp_path, format="nope")


# ------------------------------------------------------------------------------------------------ slide mode
class ThresholdModel(__import__("autotimm").models.InstanceModelBase):
    """A model whose instances are the connected bright regions of the image: the same objects wherever they are
    seen, so whole-image and sliding-window prediction must agree exactly."""

    def __init__(self, backbone, num_classes):
        super().__init__()
        self.backbone = backbone
        self.score_thresh, self.nms_thresh, self.max_detections_per_image, self.mask_threshold = 0.0, 0.5, 100, 0.5

    def forward(self, images, targets=None):
        import cv2

        if targets is not None:
            return {"loss_zero": sum(p.sum() for p in self.parameters()) * 0.0}
        out = []
        for img in images:
            _, comp = cv2.connectedComponents((img[0] > 0).numpy().astype(np.uint8))
            ids = np.unique(comp)[1:]
            masks = torch.from_numpy(comp[None] == ids[:, None, None]).to(torch.uint8)
            ys, xs = masks.bool().any(2), masks.bool().any(1)
            idx_y, idx_x = torch.arange(comp.shape[0]), torch.arange(comp.shape[1])
            boxes = torch.stack([torch.where(xs, idx_x, 10**6).amin(1), torch.where(ys, idx_y, 10**6).amin(1),
                                 torch.where(xs, idx_x, -1).amax(1) + 1, torch.where(ys, idx_y, -1).amax(1) + 1],
                                1).float().reshape(-1, 4)
            out.append({"boxes": boxes, "labels": torch.zeros(len(ids), dtype=torch.long),
                        "scores": torch.linspace(1, 0.5, len(ids)), "masks": masks})
        return out


def test_slide_finds_the_instances_whole_finds(tmp_path):
    """A generated 300x420 image with 30 disks (up to 24 px); windows of 96 every 64 (overlap 32 > any disk): the
    same 30 instances, each once with its whole mask, wherever the window borders fall."""
    from autotimm import FeatureBackboneConfig, InstanceSegmentor
    from autotimm.inference import predict_instance

    rng = np.random.default_rng(1)
    image = np.zeros((300, 420, 3), np.uint8)
    yy, xx = np.mgrid[:300, :420]
    placed = 0
    while placed < 30:
        r = rng.integers(3, 12)
        cy, cx = rng.integers(r, 300 - r), rng.integers(r, 420 - r)
        disk = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        grown = (yy - cy) ** 2 + (xx - cx) ** 2 <= (r + 2) ** 2
        if image[grown].any():
            continue  # apart, so components are the disks
        image[disk] = 255
        placed += 1
    task = InstanceSegmentor(FeatureBackboneConfig("test_resnet", pretrained=False), num_classes=1,
                             architecture={"_target_": "test_dsb2018.ThresholdModel"}).eval()
    whole = predict_instance(task, image)
    slide = predict_instance(task, image, tta={"mode": "slide", "crop_size": 96, "stride": 64})
    assert len(whole["masks"]) == len(slide["masks"]) == 30 and slide["masks"].shape == (30, 300, 420)

    def key(masks):
        return sorted(tuple(np.argwhere(m.numpy())[0]) + (int(m.sum()),) for m in masks)

    assert key(whole["masks"]) == key(slide["masks"])  # the same masks: first pixel and area of each
    assert (slide["masks"].sum(0) <= 1).all()  # reported once
    with pytest.raises(ValueError, match="one scale without flip"):
        predict_instance(task, image, tta={"flip": True})
    # eval.py tta.mode=slide: the task slides over each evaluation image the same way
    from autotimm.inference import to_tensor

    task.set_tta({"mode": "slide", "crop_size": 96, "stride": 64}, ["test"])
    x = to_tensor(image, "cpu", task.preprocess)
    preds = task._slide_preds({"image": x, "valid_size": torch.tensor([[300, 420]]),
                               "orig_size": torch.tensor([[300, 420]])})
    assert key(preds[0]["masks"]) == key(slide["masks"])
    with pytest.raises(ValueError, match="instance models take mode=slide"):
        task.set_tta({"scales": [0.5, 1.0]})


def test_fixed_scale_keeps_the_pixel_size(tmp_path):
    """scale=2: every image is resized by 2 (not its longest side to image_size); training crops image_size
    windows from it, evaluation runs it whole at that scale (padded to a multiple of 32) and scores at the original
    size; a model trained so predicts raw images the same way (preprocess.scale)."""
    from autotimm import FeatureBackboneConfig, InstanceSegmentor
    from autotimm.inference import predict_instance

    root = write_dsb(tmp_path / "d", images=(("a", 2, 40), ("b", 1, 24)))
    dm = InstanceSegmentationDataModule(root, format="dsb2018", image_size=32, scale=2.0, batch_size=2,
                                        num_workers=0, val_split="train", augmentation_preset="light")
    dm.setup("fit")
    train = dm.train_dataset[0]
    assert train["image"].shape == (3, 32, 32)  # a window of the 80 x 80 image
    val = dm.val_dataset[0]
    assert val["image"].shape == (3, 96, 96) and val["valid_size"].tolist() == [80, 80]  # 2 x 40, padded to 96
    assert val["target"]["boxes"].tolist() == [[6, 4, 20, 16], [6, 22, 20, 34]]  # the 40 px boxes, doubled
    assert val["orig_target"]["masks"].shape == (2, 40, 40)
    task = InstanceSegmentor(FeatureBackboneConfig("test_resnet", pretrained=False), num_classes=1,
                             architecture={"_target_": "test_dsb2018.ThresholdModel"}, preprocess={"scale": 2.0})
    image = np.zeros((40, 50, 3), np.uint8)
    image[10:20, 5:15] = 255
    det = predict_instance(task.eval(), image)
    assert det["masks"].shape == (1, 40, 50) and det["boxes"].tolist() == [[5, 10, 15, 20]]


# ------------------------------------------------------------------------------------------ a calibrated threshold
def test_match_counts_by_score_equal_filtering_first():
    """At every score threshold, the one-array counts equal ``match_counts`` of the detections scoring >= it."""
    from autotimm.metrics.matching import SCORE_GRID, match_counts, match_counts_by_score

    rng = np.random.default_rng(0)
    iou = rng.uniform(0, 1, (40, 25)) * (rng.uniform(0, 1, (40, 25)) < 0.1)
    scores = rng.uniform(0, 1, 40)
    got = match_counts_by_score(iou, scores)
    assert got.shape == (len(SCORE_GRID), 10, 3)
    for s, counts in zip(SCORE_GRID, got):
        assert np.array_equal(counts, match_counts(iou[scores >= s]))


class JunkModel(ThresholdModel):
    """ThresholdModel's bright regions, each scored 0.9, plus one false detection scored 0.6: a 3x3 square in the
    bottom-right corner, where the test images hold no nucleus; those above its ``score_thresh`` are kept."""

    def forward(self, images, targets=None):
        out = super().forward(images, targets)
        if targets is not None:
            return out
        for i, (det, img) in enumerate(zip(out, images)):
            h, w = img.shape[-2:]
            junk = torch.zeros(1, h, w, dtype=torch.uint8)
            junk[0, h - 3:, w - 3:] = 1
            det["boxes"] = torch.cat([det["boxes"], torch.tensor([[w - 3, h - 3, w, h]], dtype=torch.float32)])
            det["labels"] = torch.zeros(len(det["boxes"]), dtype=torch.long)
            det["scores"] = torch.cat([torch.full((len(det["masks"]),), 0.9), torch.tensor([0.6])])
            det["masks"] = torch.cat([det["masks"], junk])
            keep = det["scores"] >= self.score_thresh  # its post-processing threshold, as a real model's
            out[i] = {k: v[keep] for k, v in det.items()}
        return out


def write_bright_dsb(root, nuclei=(("a", 2), ("b", 1), ("c", 2))):
    """A DSB2018 tree of 48 px black images whose nuclei are white 8x8 squares; train.txt a, b; val.txt c."""
    for name, n in nuclei:
        (root / "stage1_train" / name / "images").mkdir(parents=True)
        (root / "stage1_train" / name / "masks").mkdir()
        image = np.zeros((48, 48, 3), np.uint8)
        for k in range(n):
            m = np.zeros((48, 48), np.uint8)
            m[4 + 14 * k: 12 + 14 * k, 4:12] = 255
            image[m > 0] = 255
            Image.fromarray(m).save(root / "stage1_train" / name / "masks" / f"m{k}.png")
        Image.fromarray(image).save(root / "stage1_train" / name / "images" / f"{name}.png")
    (root / "train.txt").write_text("a\nb\n")
    (root / "val.txt").write_text("c\n")
    return root


def test_score_threshold_calibrated_on_training_images(tmp_path):
    """ScoreThresholdCalibration scores the training images at every threshold of its grid and sets the best on the
    task's MatchingAccuracy: the model's nuclei score 0.9 and its one false detection 0.6, so 0.65 (the lowest
    threshold that drops it) is perfect where 0.5 scores (2/3 + 1/2) / 2 on the two training images; val is then
    scored at 0.65 and logs it, and the checkpoint carries it to eval (load_task)."""
    import pytorch_lightning as pl

    from autotimm import FeatureBackboneConfig, InstanceSegmentor, MetricConfig
    from autotimm.tasks import load_task
    from autotimm.training import ScoreThresholdCalibration

    root = write_bright_dsb(tmp_path / "d")
    dm = InstanceSegmentationDataModule(root, format="dsb2018", image_size=48, batch_size=2, num_workers=0,
                                        augmentation_preset="light")
    task = InstanceSegmentor(FeatureBackboneConfig("test_resnet", pretrained=False), num_classes=1,
                             architecture={"_target_": "test_dsb2018.JunkModel"},
                             metrics=[MetricConfig(name="dsb", metric_class="MatchingAccuracy",
                                                   params={"score_thresh": 0.5}, stages=["val", "test"])])
    calibration = ScoreThresholdCalibration(images=8)
    trainer = pl.Trainer(max_epochs=1, callbacks=[calibration], logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(task, datamodule=dm)
    grid = calibration.grid
    assert calibration.score_thresh == 0.65 and task.calibrated_score_thresh == 0.65
    assert calibration.table[grid == 0.5][0] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert calibration.table[(grid >= 0.65) & (grid <= 0.9)].tolist() == [1.0] * 6  # a score of 0.9 counts at 0.9
    assert calibration.table[-1] == 0  # at 0.95 nothing is left
    logged = {k: float(v) for k, v in trainer.callback_metrics.items()}
    assert logged["val/score_thresh"] == pytest.approx(0.65) and logged["val/dsb_score"] == 1.0  # junk dropped on c
    path = tmp_path / "m.ckpt"
    trainer.save_checkpoint(path)
    assert torch.load(path, weights_only=False)["autotimm"]["score_thresh"] == 0.65
    loaded = load_task(path)
    assert [m.score_thresh for m in loaded.metric_manager.metrics.values()] == [0.65, 0.65]
    # predict.py's default (score_thresh=auto) writes the detections above the calibrated threshold: the two nuclei
    # of c, not the false detection at 0.6; 0.5 given explicitly keeps it, and a checkpoint without one uses 0.5
    from omegaconf import OmegaConf

    from autotimm.cli.predict import predict

    def scores(ckpt, thresh, out):
        predict(OmegaConf.create({"ckpt_path": str(ckpt), "input": str(root / "stage1_train" / "c" / "images"),
                                  "output": str(out), "image_size": None, "tta": None, "score_thresh": thresh,
                                  "device": "cpu"}))
        return sorted(r["score"] for r in json.loads((out / "results.json").read_text()))

    assert scores(path, "auto", tmp_path / "p1") == pytest.approx([0.9, 0.9])
    assert scores(path, 0.5, tmp_path / "p2") == pytest.approx([0.6, 0.9, 0.9])
    task.calibrated_score_thresh = None
    trainer.save_checkpoint(tmp_path / "plain.ckpt")
    assert scores(tmp_path / "plain.ckpt", "auto", tmp_path / "p3") == pytest.approx([0.6, 0.9, 0.9])
    with pytest.raises(ValueError, match="score_thresh: a number in \\[0, 1\\] or 'auto'"):
        scores(path, "high", tmp_path / "p4")
    with pytest.raises(ValueError, match="score_thresh: a number in"):
        scores(path, 1.5, tmp_path / "p5")
    with pytest.raises(ValueError, match="objective must be one of"):
        ScoreThresholdCalibration(objective="map")
