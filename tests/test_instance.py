"""Instance segmentation: FCOS assignment and post-processing, mask pasting, data, and mAP against COCOeval."""

import json

import albumentations as A
import numpy as np
import pytest
import torch
from albumentations.pytorch import ToTensorV2
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from autotimm import FeatureBackboneConfig, InstanceSegmentationDataModule, InstanceSegmentor, MetricConfig
from autotimm.data.formats.coco import ann_to_mask, anns_to_masks
from autotimm.data.instance import mask_extents, masks_to_boxes
from autotimm.heads import MaskHead, SharedMaskHead
from autotimm.losses import MaskLoss
from autotimm.metrics import build_metric
from autotimm.models.fcos import assign_targets, level_ranges, make_points, paste_masks, postprocess

TINY = FeatureBackboneConfig("test_resnet", pretrained=False)


# ------------------------------------------------------------------------------------------------ assignment
def test_assignment_by_hand():
    points, strides, lvl = make_points([(4, 4)], [8])  # one level, stride 8: centres 4, 12, 20, 28
    ranges = level_ranges(1, lvl)
    boxes = torch.tensor([[[0.0, 0.0, 16.0, 16.0], [0.0, 0.0, 32.0, 32.0]]])
    labels = torch.tensor([[2, 1]])
    valid = torch.tensor([[True, True]])
    pos, lab, bx, ctr = assign_targets(points, strides, ranges, boxes, labels, valid, center_radius=1.5)
    pos, lab, ctr = pos[0].view(4, 4), lab[0].view(4, 4), ctr[0].view(4, 4)
    # small box: its centre region (radius 12 around (8, 8), clipped to the box) holds the 4 locations at 4 and 12;
    # big box: the open region x, y in (4, 28) around (16, 16) holds 12 and 20 on each axis, and (12, 12) goes to
    # the smaller box (ties to the smallest), leaving it 3
    assert lab[:2, :2].eq(2).all() and pos[:2, :2].all()
    assert pos[1, 2] and pos[2, 1] and pos[2, 2] and lab[1, 2] == lab[2, 1] == lab[2, 2] == 1
    assert pos.sum() == 7
    assert ctr[0, 0].item() == pytest.approx(1 / 3)  # l=t=4, r=b=12 -> sqrt(4/12 * 4/12)
    assert not pos[0, 3] and not pos[3, 0]  # outside the big box's centre region
    assert torch.equal(bx[0, 0], boxes[0, 0])


def test_size_ranges_send_big_boxes_to_coarse_levels():
    points, strides, lvl = make_points([(16, 16), (8, 8)], [8, 16])
    ranges = level_ranges(2, lvl)
    big = torch.tensor([[[0.0, 0.0, 128.0, 128.0]]])
    pos, *_ = assign_targets(points, strides, ranges, big, torch.tensor([[0]]), torch.tensor([[True]]))
    assert pos[0, lvl == 0].sum() == 0 and pos[0, lvl == 1].sum() > 0


def test_no_gt_and_no_positive_losses_are_finite():
    model = InstanceSegmentor(TINY, num_classes=3, fpn_channels=32, head_num_convs=1)
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long),
             "masks": torch.zeros(0, 64, 64, dtype=torch.uint8), "iscrowd": torch.zeros(0, dtype=torch.bool)}
    losses = model(torch.randn(2, 3, 64, 64), [empty, empty])  # the model returns its named losses given targets
    assert sorted(losses) == ["loss_cls", "loss_ctr", "loss_mask", "loss_reg"]  # terms only: the task sums them
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_reg"].item() == 0 and losses["loss_mask"].item() == 0
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_mask_loss_uses_the_label_channel():
    logits = torch.zeros(2, 3, 2, 2)
    logits[0, 1] = 10.0  # confident foreground on instance 0's own class
    target = torch.ones(2, 2, 2)
    loss = MaskLoss()(logits, target, torch.tensor([1, 2]))
    expected = (4 * torch.nn.functional.softplus(torch.tensor(-10.0)) + 4 * np.log(2)) / 8
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert MaskLoss()(torch.zeros(0, 3, 2, 2), torch.zeros(0, 2, 2), torch.zeros(0, dtype=torch.long)).item() == 0


def _square_targets(counts, size=64):
    """One target per image with ``counts[i]`` square instances (label = instance number % 3, box = its mask)."""
    targets = []
    for n in counts:
        boxes = torch.tensor([[2.0 + 5 * j % 50, 3.0 + 7 * j % 40, 12.0 + 5 * j % 50, 17.0 + 7 * j % 40]
                              for j in range(n)]).reshape(-1, 4)
        masks = torch.zeros(n, size, size, dtype=torch.uint8)
        for j, (x1, y1, x2, y2) in enumerate(boxes.int().tolist()):
            masks[j, y1:y2, x1:x2] = 1
        targets.append({"boxes": boxes, "labels": torch.arange(n) % 3, "masks": masks,
                        "iscrowd": torch.zeros(n, dtype=torch.bool)})
    return targets


def test_mask_rois_per_image_samples_within_each_image():
    model = InstanceSegmentor(TINY, num_classes=3, fpn_channels=32, head_num_convs=1, mask_rois_per_image=2).model
    image_index = torch.tensor([0, 0, 0, 0, 0, 1, 2, 2, 2])
    seen = set()
    for seed in range(40):
        torch.manual_seed(seed)
        keep = model.sample_mask_rois(image_index, 4)
        assert keep.tolist() == sorted(set(keep.tolist()))  # ascending, no repeats
        assert torch.bincount(image_index[keep], minlength=4).tolist() == [2, 1, 2, 0]
        seen.update(keep.tolist())
    assert seen == set(range(9))  # every instance gets drawn
    assert model.sample_mask_rois(torch.tensor([0, 0, 1, 1]), 2) is None  # nothing over the cap: all kept
    model.mask_rois_per_image = None
    assert model.sample_mask_rois(image_index, 4) is None
    with pytest.raises(ValueError, match="mask_rois_per_image"):
        InstanceSegmentor(TINY, num_classes=3, fpn_channels=32, head_num_convs=1, mask_rois_per_image=0)


def test_mask_loss_on_sampled_rois_equals_the_loss_on_those_instances():
    torch.manual_seed(0)
    model = InstanceSegmentor(TINY, num_classes=3, fpn_channels=32, head_num_convs=1, mask_rois_per_image=3).model
    targets = _square_targets([6, 2, 4])
    out = model.features(torch.randn(3, 3, 64, 64))
    torch.manual_seed(5)
    logits, mask_t, labels = model._mask_inputs(out["mask_features"], targets)
    torch.manual_seed(5)
    keep = model.sample_mask_rois(torch.tensor([0] * 6 + [1] * 2 + [2] * 4), 3)
    assert len(keep) == 3 + 2 + 3 and len(logits) == len(keep)
    # the same instances, given as the only targets, to a model that keeps every ROI
    starts, kept = [0, 6, 8], []
    for i, t in enumerate(targets):
        sel = [k - starts[i] for k in keep.tolist() if starts[i] <= k < starts[i] + len(t["boxes"])]
        kept.append({key: v[sel] for key, v in t.items()})
    model.mask_rois_per_image = None
    want_logits, want_t, want_labels = model._mask_inputs(out["mask_features"], kept)
    assert torch.equal(labels, want_labels) and torch.equal(mask_t, want_t)
    assert torch.allclose(logits, want_logits, atol=1e-6)


# ------------------------------------------------------------------------------------------------ inference
def test_postprocess_nms_per_class_and_top_k_per_image():
    points = torch.tensor([[8.0, 8.0], [9.0, 8.0], [40.0, 40.0]])
    strides = torch.full((3,), 8.0)
    reg = torch.ones(2, 3, 4)  # 16x16 boxes around each point
    cls = torch.full((2, 3, 2), -10.0)
    cls[0, 0, 0], cls[0, 1, 0], cls[0, 1, 1], cls[0, 2, 1] = 4.0, 3.0, 2.0, 1.0
    cls[1, 2, 0] = 5.0
    ctr = torch.full((2, 3), 10.0)
    img, boxes, scores, labels = postprocess(cls, reg, ctr, points, strides, (64, 64), score_thresh=0.3,
                                             nms_thresh=0.5, max_detections=2)
    # image 0: point 1 class 0 is suppressed by point 0 class 0 (IoU ~0.9); class 1 at point 1 survives
    # (other class); point 2 class 1 is third and cut by max_detections=2
    assert img.tolist() == [0, 0, 1]
    assert labels.tolist() == [0, 1, 0]
    assert scores[0] > scores[1]
    assert torch.allclose(boxes[0], torch.tensor([0.0, 0.0, 16.0, 16.0]))


def test_postprocess_keeps_up_to_1000_detections_on_a_dense_grid():
    """A 40x40 grid of disjoint 6 px boxes (1600 candidates, 2 images): NMS removes none, the per-image cap keeps the
    best 1000 of the best pre_nms_top_k, in score order; too small a pre-NMS top-k is an error, not a silent cap."""
    ys, xs = torch.meshgrid(torch.arange(40.0), torch.arange(40.0), indexing="ij")
    points = torch.stack([xs.flatten() * 8 + 4, ys.flatten() * 8 + 4], 1)  # 1600 points, 8 px apart
    strides = torch.full((1600,), 8.0)
    reg = torch.full((2, 1600, 4), 3.0 / 8)  # 6x6 boxes (reg is in strides): never overlapping
    cls = torch.linspace(-3, 3, 1600).repeat(2, 1)[..., None]
    ctr = torch.full((2, 1600), 10.0)
    img, boxes, scores, labels = postprocess(cls, reg, ctr, points, strides, (320, 320), score_thresh=0.0,
                                             nms_thresh=0.5, max_detections=1000, pre_nms_top_k=1200)
    assert torch.bincount(img).tolist() == [1000, 1000]
    assert torch.equal(scores[:1000], torch.sort(scores[:1000], descending=True).values)
    assert torch.allclose(boxes[0], torch.tensor([313.0, 313.0, 319.0, 319.0]))  # the best: the last point (316)
    with pytest.raises(ValueError, match="pre_nms_top_k"):
        InstanceSegmentor(TINY, num_classes=2, fpn_channels=32, head_num_convs=1, max_detections_per_image=1000,
                          pre_nms_top_k=500)


def test_dense_shapes_generator(tmp_path):
    """dataset=shapes_dense: 150-400 small shapes per image; every visible instance is one COCO annotation whose RLE
    decodes to its pixels; fragments under 16 px are iscrowd; instances never share a pixel."""
    from autotimm.data.shapes import MIN_VISIBLE, generate_shapes, render_scene

    rng = np.random.default_rng(0)
    img, mask, instances = render_scene(rng, 256, max_shapes=400, min_shapes=150, radius=(0.012, 0.03))
    assert 150 * 0.5 < len(instances) <= 400 and img.shape == (256, 256, 3)
    stack = np.stack([m for _, m, _ in instances])
    assert stack.sum(0).max() == 1  # visible parts are disjoint
    assert all(crowd == (m.sum() < MIN_VISIBLE) for _, m, crowd in instances)
    areas = np.array([m.sum() for _, m, crowd in instances if not crowd])
    assert areas.max() < 250 and np.median(areas) < 100  # small: 6-15 px across
    root = generate_shapes(tmp_path / "dense", num_train=2, num_val=1, image_size=256, max_shapes=400,
                           min_shapes=150, radius=(0.012, 0.03))
    coco = json.loads((root / "annotations" / "instances_train.json").read_text())
    per_image = np.bincount([a["image_id"] for a in coco["annotations"]])[1:]
    assert len(per_image) == 2 and per_image.min() > 75
    ann = coco["annotations"][0]
    decoded = mask_utils.decode({**ann["segmentation"], "counts": ann["segmentation"]["counts"].encode()})
    assert decoded.sum() == ann["area"]
    with pytest.raises(ValueError, match="min_shapes"):
        generate_shapes(tmp_path / "bad", num_train=1, num_val=1, min_shapes=5, max_shapes=4)


def test_postprocess_nms_never_crosses_images_or_classes():
    """Identical boxes survive NMS when they belong to different images or classes; within one image and class the
    lower-scored duplicate goes. (Per-image NMS uses image-size offsets; the offset boxes must never overlap.)"""
    points = torch.tensor([[60.0, 60.0], [60.0, 60.0]])  # two locations with the same box, at the image corner
    strides = torch.full((2,), 8.0)
    reg = torch.full((3, 2, 4), 0.5)  # 8x8 boxes: [56, 56, 64, 64], touching the 64x64 image's corner
    cls = torch.full((3, 2, 2), -10.0)
    cls[0, 0, 0], cls[0, 1, 0] = 3.0, 2.0  # image 0: same class twice -> one kept
    cls[1, 0, 0], cls[1, 0, 1] = 3.0, 2.0  # image 1: two classes -> both kept
    cls[2, 0, 1] = 1.0  # image 2: the same box again
    ctr = torch.full((3, 2), 10.0)
    img, boxes, scores, labels = postprocess(cls, reg, ctr, points, strides, (64, 64), score_thresh=0.3)
    assert img.tolist() == [0, 1, 1, 2] and labels.tolist() == [0, 0, 1, 1]
    assert torch.equal(boxes, torch.tensor([[56.0, 56.0, 64.0, 64.0]]).expand(4, 4))


def test_mask_head_pooling_equals_torchvision_multiscale_roi_align():
    from collections import OrderedDict

    from torchvision.ops import MultiScaleRoIAlign

    from autotimm.heads import SharedMaskHead

    torch.manual_seed(0)
    # the shared head pools from its 2x-upsampled maps (strides 4, 8, 16), Mask R-CNN's head from P3-P5 (8, 16, 32)
    head = SharedMaskHead(8, 3, roi_pool_size=7)
    feats = OrderedDict(p3=torch.randn(2, 8, 128, 96), p4=torch.randn(2, 8, 64, 48), p5=torch.randn(2, 8, 32, 24))
    check_pooling(head, feats, MultiScaleRoIAlign, [20.0, 120.0, 250.0])
    head = MaskHead(8, 3, roi_pool_size=7, sampling_ratio=1)
    feats = OrderedDict(p3=torch.randn(2, 8, 64, 48), p4=torch.randn(2, 8, 32, 24), p5=torch.randn(2, 8, 16, 12))
    check_pooling(head, feats, MultiScaleRoIAlign, [20.0, 240.0, 500.0])


def check_pooling(head, feats, MultiScaleRoIAlign, sizes):
    boxes = []
    for n in (9, 6):
        xy, wh = torch.rand(n, 2) * 200, torch.rand(n, 2) * 300 + 4
        wh[:3] = torch.tensor(sizes)[:, None].expand(3, 2)  # one box per level, by its size
        boxes.append(torch.cat([xy, xy + wh], 1))
    levels = head.level_mapper([torch.cat(boxes)])
    assert set(levels.tolist()) == {0, 1, 2}  # every level is used
    want = MultiScaleRoIAlign(["p3", "p4", "p5"], 7, 1)(feats, boxes, [(512, 384)] * 2)
    assert torch.equal(head.pool(feats, boxes), want)
    flat = torch.cat([torch.tensor([[0.0]] * 9 + [[1.0]] * 6), torch.cat(boxes)], 1)
    assert torch.equal(head.pool_rois(feats, flat), want)


def test_paste_masks_exact_on_pixel_grid():
    probs = torch.ones(2, 7, 7)
    boxes = torch.tensor([[2.0, 3.0, 6.0, 5.0], [0.0, 0.0, 10.0, 10.0]])
    out = paste_masks(probs, boxes, 10, 12) >= 0.5
    want = torch.zeros(10, 12, dtype=torch.bool)
    want[3:5, 2:6] = True
    assert torch.equal(out[0], want)
    assert out[1, :10, :10].all() and not out[1, :, 10:].any()


@pytest.mark.parametrize("mask_size, roi", [(14, 7), (28, 14), (56, 14), (20, 10), (7, 5)])
def test_mask_and_roi_sizes_and_predict_format(mask_size, roi):
    model = InstanceSegmentor(TINY, num_classes=3, fpn_channels=32, head_num_convs=1, mask_size=mask_size,
                              roi_pool_size=roi, score_thresh=0.0, max_detections_per_image=5,
                              category_ids=[3, 7, 90])
    model.eval()
    preds = model.predict(torch.randn(2, 3, 64, 96))
    assert len(preds) == 2
    for p in preds:
        n = len(p["boxes"])
        assert p["boxes"].shape == (n, 4) and p["scores"].shape == (n,) and p["labels"].shape == (n,)
        assert p["masks"].shape == (n, 64, 96) and set(p["masks"].unique().tolist()) <= {0, 1}
        assert set(p["category_ids"].tolist()) <= {3, 7, 90}
        assert n <= 5
    for head in (model.mask_head, SharedMaskHead(32, 3, mask_size, roi, featmap_strides=model.fpn.strides[:3])):
        feats = head.features(model.model.features(torch.randn(1, 3, 64, 64))["features"])
        logits = head(head.pool(feats, [torch.tensor([[0.0, 0, 30, 30]])], (64, 64)))
        assert logits.shape == (1, 3, mask_size, mask_size)


# ------------------------------------------------------------------------------------------------ data
def rle(m):
    r = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
    r["counts"] = r["counts"].decode()
    return r


def uncompressed_rle(m):
    flat, counts, val, run = m.flatten(order="F"), [], 0, 0
    for v in flat:
        if v != val:
            counts.append(run)
            val, run = v, 0
        run += 1
    counts.append(run)
    return {"size": list(m.shape), "counts": counts}


def write_coco(root, split="val"):
    img_dir = root / f"{split}2017"
    img_dir.mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 60), dtype=np.uint8), mode="L").save(img_dir / "gray.png")
    Image.fromarray(rng.integers(0, 255, (40, 60, 4), dtype=np.uint8), mode="RGBA").save(img_dir / "rgba.png")
    Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(img_dir / "empty.jpg")
    a = np.zeros((40, 60), bool)
    a[5:15, 30:50] = True
    b = np.zeros((40, 60), bool)
    b[20:35, 5:20] = True
    crowd = np.zeros((40, 60), bool)
    crowd[0:5, 0:10] = True
    anns = [
        {"id": 1, "image_id": 10, "category_id": 7, "iscrowd": 0, "area": 100.0, "bbox": [0, 0, 10, 10],
         "segmentation": [[0, 0, 10, 0, 10, 10, 0, 10]]},
        {"id": 2, "image_id": 10, "category_id": 90, "iscrowd": 0, "area": 200.0, "bbox": [30, 5, 20, 10],
         "segmentation": rle(a)},
        {"id": 3, "image_id": 11, "category_id": 3, "iscrowd": 0, "area": 225.0, "bbox": [5, 20, 15, 15],
         "segmentation": uncompressed_rle(b)},
        {"id": 4, "image_id": 11, "category_id": 3, "iscrowd": 1, "area": 50.0, "bbox": [0, 0, 10, 5],
         "segmentation": uncompressed_rle(crowd)},
        {"id": 5, "image_id": 11, "category_id": 7, "iscrowd": 0, "area": 4.0, "bbox": [50, 30, 2, 2],
         "segmentation": [[50, 30, 52, 30, 52, 32, 50, 32]]},
    ]
    data = {"images": [{"id": 10, "file_name": "gray.png", "height": 40, "width": 60},
                       {"id": 11, "file_name": "rgba.png", "height": 40, "width": 60},
                       {"id": 12, "file_name": "empty.jpg", "height": 40, "width": 60}],
            "annotations": anns,
            "categories": [{"id": 3, "name": "car"}, {"id": 7, "name": "train"}, {"id": 90, "name": "brush"}]}
    (root / "annotations").mkdir(exist_ok=True)
    (root / "annotations" / f"instances_{split}2017.json").write_text(json.dumps(data))


def test_mask_extents_match_torchvision_plus_one():
    from torchvision.ops import masks_to_boxes as tv_masks_to_boxes
    rng = np.random.default_rng(0)
    masks = (rng.random((6, 9, 11)) > 0.97).astype(np.uint8)
    masks[2] = 0  # an empty mask
    masks[3] = 0
    masks[3, 4, 0] = masks[3, 8, 10] = 1  # corners: a box over the whole width
    boxes, nonempty = mask_extents(masks)
    ref = tv_masks_to_boxes(torch.from_numpy(masks))
    ref[:, 2:] += 1
    assert np.array_equal(boxes, ref.numpy())
    assert nonempty.tolist() == [bool(m.any()) for m in masks]
    assert boxes[3].tolist() == [0, 4, 11, 9]
    assert boxes.dtype == np.float32 and mask_extents(np.zeros((0, 4, 4), np.uint8))[0].shape == (0, 4)


def test_anns_to_masks_decodes_every_format_at_once():
    h, w = 12, 10
    square = np.zeros((h, w), np.uint8, order="F")
    square[2:6, 3:8] = 1
    compressed = mask_utils.encode(square)
    compressed = {"size": compressed["size"], "counts": compressed["counts"].decode()}  # as JSON stores it
    uncompressed = {"size": [h, w], "counts": [5, 3, 4, 108]}
    polygon = [[1.0, 1.0, 8.0, 1.0, 8.0, 9.0, 1.0, 9.0], [0.0, 10.0, 3.0, 10.0, 3.0, 11.5]]
    segms = [polygon, uncompressed, compressed]
    masks = anns_to_masks(segms, h, w)
    assert masks.shape == (3, h, w) and masks.dtype == np.uint8 and masks.flags["C_CONTIGUOUS"]
    for m, s in zip(masks, segms):
        assert np.array_equal(m.astype(bool), ann_to_mask(s, h, w))
    assert np.array_equal(masks[2], square)
    assert anns_to_masks([], h, w).shape == (0, h, w)


def test_coco_instance_decoding(tmp_path):
    write_coco(tmp_path, "train")
    write_coco(tmp_path, "val")
    dm = InstanceSegmentationDataModule(tmp_path, image_size=64, batch_size=3, num_workers=0,
                                        augmentation_preset="light", min_area=10.0)
    dm.setup("fit")
    assert dm.category_ids == [3, 7, 90] and dm.class_names == ["car", "train", "brush"]
    assert len(dm.train_dataset) == 3  # the image without annotations is kept
    val = dm.val_dataset
    gray, rgba, empty = val[0], val[1], val[2]
    assert gray["image"].shape == (3, 64, 64)  # grayscale converted to 3 channels
    ot = gray["orig_target"]
    assert ot["labels"].tolist() == [1, 2]  # category 7 -> 1, 90 -> 2 (polygon and compressed RLE)
    assert ot["masks"][1].sum() == 200 and ot["boxes"][1].tolist() == [30.0, 5.0, 50.0, 15.0]
    ot = rgba["orig_target"]
    # uncompressed RLE; the crowd is kept for evaluation; the 4-pixel object is under min_area
    assert ot["labels"].tolist() == [0, 0] and ot["iscrowd"].tolist() == [False, True]
    assert ot["masks"][0].sum() == 225
    assert len(empty["orig_target"]["labels"]) == 0
    train_rgba = dm.train_dataset[1]["target"]
    assert train_rgba["labels"].tolist() == [0] and not train_rgba["iscrowd"].any()  # no crowd in training


def test_dropped_box_takes_its_mask_and_label(shapes_root):
    crop = A.Compose([A.Crop(0, 0, 32, 32), A.Normalize(), ToTensorV2()],
                     bbox_params=A.BboxParams(format="pascal_voc", label_fields=["labels"], min_visibility=0.3))
    dm = InstanceSegmentationDataModule(shapes_root, image_size=64, batch_size=4, num_workers=0,
                                        custom_train_transforms=crop)
    dm.setup("fit")
    for i in range(len(dm.train_dataset)):
        t = dm.train_dataset[i]["target"]
        assert len(t["boxes"]) == len(t["labels"]) == len(t["masks"])
        assert torch.equal(t["boxes"], torch.from_numpy(masks_to_boxes(t["masks"].numpy().astype(bool))))


def test_strong_augmentation_keeps_boxes_masks_and_labels_in_step(shapes_root):
    dm = InstanceSegmentationDataModule(shapes_root, image_size=64, batch_size=4, num_workers=0,
                                        augmentation_preset="strong")
    dm.setup("fit")
    coco = dm.train_dataset.split.extra["coco"]
    torch.manual_seed(0)
    np.random.seed(0)
    seen_drop = False
    for _ in range(3):
        for i in range(len(dm.train_dataset)):
            t = dm.train_dataset[i]["target"]
            n_src = sum(1 for a in coco.imgToAnns[dm.train_dataset.samples[i].image_id] if not a["iscrowd"])
            seen_drop |= len(t["labels"]) < n_src
            assert len(t["boxes"]) == len(t["labels"]) == len(t["masks"])
            assert (t["masks"].flatten(1).sum(1) > 0).all()
            assert torch.equal(t["boxes"], torch.from_numpy(masks_to_boxes(t["masks"].numpy().astype(bool))))
    assert seen_drop  # strong crops did drop instances, and their masks went with them


# ------------------------------------------------------------------------------------------------ metrics
def test_map_agrees_with_cocoeval(tmp_path):
    rng = np.random.default_rng(1)
    H = W = 48
    gts, preds, images, anns, dets = [], [], [], [], []
    for img_id in range(1, 5):
        g_masks, g_labels = [], []
        for _ in range(3):
            m = np.zeros((H, W), bool)
            x, y, s = rng.integers(0, 30, 3)
            m[y: y + 8 + s % 10, x: x + 8 + s % 12] = True
            g_masks.append(m)
            g_labels.append(int(rng.integers(0, 2)))
        p_masks, p_labels, p_scores = [], [], []
        for m, lab in zip(g_masks, g_labels):
            q = np.roll(m, int(rng.integers(-3, 4)), axis=int(rng.integers(0, 2)))
            p_masks.append(q)
            p_labels.append(lab if rng.random() < 0.8 else 1 - lab)
            p_scores.append(float(rng.random()))
        gm, pm = np.stack(g_masks), np.stack(p_masks)
        gts.append({"boxes": torch.from_numpy(masks_to_boxes(gm)), "labels": torch.tensor(g_labels),
                    "masks": torch.from_numpy(gm), "iscrowd": torch.zeros(3, dtype=torch.long)})
        preds.append({"boxes": torch.from_numpy(masks_to_boxes(pm)), "labels": torch.tensor(p_labels),
                      "scores": torch.tensor(p_scores), "masks": torch.from_numpy(pm)})
        images.append({"id": img_id, "height": H, "width": W, "file_name": f"{img_id}.png"})
        for m, lab in zip(g_masks, g_labels):
            r = rle(m)
            anns.append({"id": len(anns) + 1, "image_id": img_id, "category_id": lab, "segmentation": r,
                         "area": float(m.sum()), "bbox": mask_utils.toBbox(r).tolist(), "iscrowd": 0})
        for m, lab, s in zip(p_masks, p_labels, p_scores):
            r = rle(m)
            dets.append({"image_id": img_id, "category_id": lab, "segmentation": r, "score": s,
                         "bbox": mask_utils.toBbox(r).tolist()})
    gt_file = tmp_path / "gt.json"
    gt_file.write_text(json.dumps({"images": images, "annotations": anns,
                                   "categories": [{"id": 0, "name": "a"}, {"id": 1, "name": "b"}]}))
    coco = COCO(str(gt_file))
    for iou_type in ("segm", "bbox"):
        ev = COCOeval(coco, coco.loadRes(dets), iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
        # as the task builds it from a MetricConfig (with COCO's exact thresholds)
        metric = build_metric(MetricConfig(name="m", metric_class="MeanAveragePrecision",
                                           params={"box_format": "xyxy", "iou_type": iou_type}), {})
        metric.update(preds, gts)
        res = metric.compute()
        assert res["map"].item() == pytest.approx(ev.stats[0], abs=1e-3)
        assert res["map_50"].item() == pytest.approx(ev.stats[1], abs=1e-3)
        assert res["map_75"].item() == pytest.approx(ev.stats[2], abs=1e-3)


def _dense_scene(rng, n, H=64, W=64):
    """n small (3-5 px) boxes-as-masks and, per object, a slightly shifted prediction with a random score."""
    g, p = np.zeros((n, H, W), bool), np.zeros((n, H, W), bool)
    for i in range(n):
        x, y = rng.integers(0, W - 6), rng.integers(0, H - 6)
        w, h = rng.integers(3, 6, 2)
        g[i, y: y + h, x: x + w] = True
        p[i] = np.roll(g[i], int(rng.integers(-1, 2)), axis=int(rng.integers(0, 2)))
    gt = {"boxes": torch.from_numpy(masks_to_boxes(g)), "labels": torch.zeros(n, dtype=torch.long),
          "masks": torch.from_numpy(g), "iscrowd": torch.zeros(n, dtype=torch.long)}
    pred = {"boxes": torch.from_numpy(masks_to_boxes(p)), "labels": torch.zeros(n, dtype=torch.long),
            "scores": torch.from_numpy(rng.random(n)).float(), "masks": torch.from_numpy(p)}
    return pred, gt


def dense_map(thresholds, scenes):
    metric = build_metric(MetricConfig(name="m", metric_class="MeanAveragePrecision",
                                       params={"box_format": "xyxy", "iou_type": "segm",
                                               "max_detection_thresholds": thresholds}), {})
    for pred, gt in scenes:
        metric.update([pred], [gt])
    return metric.compute()


def test_map_at_more_than_100_detections():
    """Dense scenes: COCO mAP over up to 300 detections per image. pycocotools' summary hard-codes maxDets=100 for
    AP@[.5:.95] (it would read -1 with [1, 10, 300]); ours scores it at the last threshold like every other AP line.
    With at most 100 detections per image the 300 cap changes nothing, so it equals COCOeval's standard mAP."""
    rng = np.random.default_rng(0)
    sparse = [_dense_scene(rng, 90) for _ in range(2)]
    standard = dense_map([1, 10, 100], sparse)
    wide = dense_map([1, 10, 300], sparse)
    assert 0 < standard["map"].item() < 1
    assert wide["map"].item() == pytest.approx(standard["map"].item(), abs=1e-6)
    assert wide["map_50"].item() == pytest.approx(standard["map_50"].item(), abs=1e-6)
    assert "mar_300" in wide
    dense = [_dense_scene(rng, 250) for _ in range(2)]
    capped, full = dense_map([1, 10, 100], dense), dense_map([1, 10, 300], dense)
    assert full["map"].item() > capped["map"].item() + 0.1  # 100 of 250 objects cannot be found
    assert full["map_50"].item() > capped["map_50"].item() + 0.1
    assert capped["mar_100"].item() < 0.5 * full["mar_300"].item()  # recall capped at 100 of 250


def _coco_reference(tmp_path, preds, gts, iou_type):
    """COCOeval's stats on the same images, every image listed in the ground truth (as COCO's own files do)."""
    images, anns, dets = [], [], []
    for i, (p, g) in enumerate(zip(preds, gts)):
        images.append({"id": i, "height": 16, "width": 16})
        for m in g["masks"].numpy():
            r = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
            r["counts"] = r["counts"].decode()
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": 0, "iscrowd": 0, "segmentation": r,
                         "area": float(mask_utils.area(r)), "bbox": mask_utils.toBbox(r).tolist()})
        for m, s in zip(p["masks"].numpy(), p["scores"].tolist()):
            r = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
            r["counts"] = r["counts"].decode()
            dets.append({"image_id": i, "category_id": 0, "score": s, "segmentation": r,
                         "bbox": mask_utils.toBbox(r).tolist()})
    gt_file = tmp_path / "gt.json"
    gt_file.write_text(json.dumps({"images": images, "annotations": anns, "categories": [{"id": 0, "name": "a"}]}))
    coco = COCO(str(gt_file))
    ev = COCOeval(coco, coco.loadRes(dets) if dets else COCO(), iou_type)
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return ev.stats


def test_map_counts_detections_on_images_without_ground_truth_and_a_model_that_finds_nothing(tmp_path):
    """torchmetrics' segm path drops images without masks: a false detection on an empty image was not counted
    (AP 1.0) and a model detecting nothing read -1. Ours scores both as COCOeval does (0.5, then 0)."""
    m = torch.zeros(1, 16, 16, dtype=torch.bool)
    m[0, 2:8, 2:8] = True
    none = torch.zeros(0, 16, 16, dtype=torch.bool)
    label = torch.zeros(1, dtype=torch.long)
    gts = [{"masks": m, "labels": label, "boxes": torch.tensor([[2.0, 2, 8, 8]])},
           {"masks": none, "labels": label[:0], "boxes": torch.zeros(0, 4)}]  # the second image holds nothing
    cases = {"a false detection above the true one, on the empty image": ([0.9], [0.95], 0.5),
             "nothing detected anywhere": ([], [], 0.0)}
    for name, (s0, s1, want) in cases.items():
        preds = [{"masks": m[: len(s)] if s else none, "scores": torch.tensor(s, dtype=torch.float),
                  "labels": label[: len(s)], "boxes": torch.tensor([[2.0, 2, 8, 8]] * len(s)).reshape(-1, 4)}
                 for s in (s0, s1)]
        ref = _coco_reference(tmp_path, preds, gts, "segm") if s0 else None
        for iou_type in ("segm", "bbox"):
            metric = build_metric(MetricConfig(name="m", metric_class="MeanAveragePrecision",
                                               params={"box_format": "xyxy", "iou_type": iou_type}), {})
            metric.update(preds, gts)
            res = metric.compute()
            assert res["map_50"].item() == pytest.approx(want, abs=1e-6), (name, iou_type)
            assert res["map"].item() == pytest.approx(want, abs=1e-6), (name, iou_type)
            if ref is not None:
                assert res["map_50"].item() == pytest.approx(ref[1], abs=1e-6)


def test_map_metric_survives_copy_and_pickle():
    """torchmetrics' clone() deep-copies and DDP pickles metrics: the summary fix must travel with them."""
    import copy
    import pickle

    rng = np.random.default_rng(0)
    scenes = [_dense_scene(rng, 150)]
    metric = build_metric(MetricConfig(name="m", metric_class="MeanAveragePrecision",
                                       params={"box_format": "xyxy", "iou_type": "segm",
                                               "max_detection_thresholds": [1, 10, 300]}), {})
    want = dense_map([1, 10, 300], scenes)["map"].item()
    for other in (copy.deepcopy(metric), pickle.loads(pickle.dumps(metric)), metric.clone()):
        for pred, gt in scenes:
            other.update([pred], [gt])
        assert other.compute()["map"].item() == pytest.approx(want, abs=1e-9) and want > 0


def test_instance_metrics_count_as_many_detections_as_the_model_keeps():
    model = InstanceSegmentor(TINY, num_classes=2, fpn_channels=32, head_num_convs=1, max_detections_per_image=400,
                              metrics=[MetricConfig(name="mask_map", metric_class="MeanAveragePrecision",
                                                    params={"box_format": "xyxy", "iou_type": "segm"})])
    assert model.metric_manager.metrics["val__mask_map"].max_detection_thresholds == [1, 10, 400]


def test_instance_metrics_follow_a_later_max_detections_change():
    """set_postprocess(max_detections_per_image=300) after construction: the COCO mAP is computed over 300
    detections per image (mask_mar_300, the same AP as a metric built for 300), not the 100 the task was built with;
    a max_detection_thresholds the config itself set stays as given."""
    rng = np.random.default_rng(1)
    scenes = [_dense_scene(rng, 250) for _ in range(2)]
    fixed = [1, 10, 50]
    model = InstanceSegmentor(TINY, num_classes=2, fpn_channels=32, head_num_convs=1, metrics=[
        MetricConfig(name="mask_map", metric_class="MeanAveragePrecision",
                     params={"box_format": "xyxy", "iou_type": "segm"}, stages=["val"]),
        MetricConfig(name="fixed_map", metric_class="MeanAveragePrecision",
                     params={"box_format": "xyxy", "iou_type": "segm", "max_detection_thresholds": fixed},
                     stages=["val"])])
    assert model.metric_manager.metrics["val__mask_map"].max_detection_thresholds == [1, 10, 100]
    model.model.set_postprocess(max_detections_per_image=300)
    logged = {}
    model.log = lambda name, value, **kw: logged.__setitem__(name, float(value))
    for pred, gt in scenes:
        for key in ("val__mask_map", "val__fixed_map"):
            model.metric_manager.metrics[key].update([pred], [gt])
    model._log_dict_metrics("val")
    want_300, want_100, want_50 = (dense_map(t, scenes) for t in ([1, 10, 300], [1, 10, 100], fixed))
    assert want_300["map"].item() > want_100["map"].item() + 0.05  # 250 objects per image: the cap matters
    assert logged["val/mask_map"] == pytest.approx(want_300["map"].item(), abs=1e-9)
    assert "val/mask_mar_300" in logged and "val/mask_mar_100" not in logged
    assert logged["val/fixed_map"] == pytest.approx(want_50["map"].item(), abs=1e-9)
    assert "val/fixed_mar_50" in logged
    assert model.metric_manager.metrics["val__fixed_map"].max_detection_thresholds == fixed


def test_map_metric_names_logged():
    model = InstanceSegmentor(TINY, num_classes=2, fpn_channels=32, head_num_convs=1, metrics=[
        MetricConfig(name="mask_map", metric_class="MeanAveragePrecision",
                     params={"box_format": "xyxy", "iou_type": "segm"}, stages=["val"])])
    logged = {}
    model.log = lambda name, value, **kw: logged.__setitem__(name, float(value))
    m = torch.zeros(1, 16, 16, dtype=torch.bool)
    m[0, 2:8, 2:8] = True
    t = {"boxes": torch.tensor([[2.0, 2, 8, 8]]), "labels": torch.tensor([1]), "masks": m,
         "iscrowd": torch.tensor([0])}
    p = {"boxes": torch.tensor([[2.0, 2, 8, 8]]), "labels": torch.tensor([1]), "scores": torch.tensor([0.9]),
         "masks": m}
    model.metric_manager.metrics["val__mask_map"].update([p], [t])
    model._log_dict_metrics("val")
    assert logged["val/mask_map"] == pytest.approx(1.0) and logged["val/mask_map_50"] == pytest.approx(1.0)
    assert "val/mask_map_75" in logged and "val/mask_mar_100" in logged


def test_spec_custom_transform_coco_boxes_and_variable_sizes(shapes_root):
    """The API reference's example: COCO-format boxes, RandomScale (sizes vary), label field 'labels'."""
    transforms = A.Compose([
        A.RandomScale(scale_limit=0.1),
        A.HorizontalFlip(p=0.5),
        A.ColorJitter(brightness=0.2, contrast=0.2),
        A.Normalize(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
        ToTensorV2(),
    ], bbox_params=A.BboxParams(format="coco", label_fields=["labels"]))
    dm = InstanceSegmentationDataModule(shapes_root, image_size=64, batch_size=4, num_workers=0,
                                        custom_train_transforms=transforms)
    dm.setup("fit")
    ds = dm.train_dataset
    for i in range(8):
        t = ds[i]["target"]
        src = [a for a in ds.split.extra['coco'].imgToAnns[ds.samples[i].image_id] if not a["iscrowd"]]
        assert len(t["labels"]) == len(src)  # nothing dropped by a mild rescale
        assert sorted(t["labels"].tolist()) == sorted(dm.category_ids.index(a["category_id"]) for a in src)
        assert torch.equal(t["boxes"], torch.from_numpy(masks_to_boxes(t["masks"].numpy().astype(bool))))
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape[0] == 4
    assert all(tg["masks"].shape[-2:] == batch["image"].shape[-2:] for tg in batch["targets"])


def test_custom_transform_without_label_fields(shapes_root):
    crop = A.Compose([A.Crop(0, 0, 32, 32), A.Normalize(), ToTensorV2()],
                     bbox_params=A.BboxParams(format="pascal_voc", min_visibility=0.3))
    dm = InstanceSegmentationDataModule(shapes_root, image_size=64, num_workers=0, custom_train_transforms=crop)
    dm.setup("fit")
    for i in range(len(dm.train_dataset)):
        t = dm.train_dataset[i]["target"]
        assert len(t["boxes"]) == len(t["labels"]) == len(t["masks"])
        assert torch.equal(t["boxes"], torch.from_numpy(masks_to_boxes(t["masks"].numpy().astype(bool))))


def test_custom_transform_without_bbox_params_is_a_clear_error(shapes_root):
    dm = InstanceSegmentationDataModule(shapes_root, image_size=64, num_workers=0,
                                        custom_train_transforms=A.Compose([A.Normalize(), ToTensorV2()]))
    dm.setup("fit")
    with pytest.raises(ValueError, match="bbox_params is needed"):
        dm.train_dataset[0]
