"""Every data format on small generated trees, asserting exact label sets."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from autotimm import SegmentationDataModule
from autotimm.data import DatasetLayoutError, generate_shapes
from autotimm.data.formats import coco as coco_fmt


def save_rgb(path, h, w, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)


def voc_palette():
    from autotimm.inference import palette

    return palette(256).flatten().tolist()  # the standard VOC bit-interleaved palette


def datamodule(root, fmt, **kw):
    dm = SegmentationDataModule(root, format=fmt, image_size=32, batch_size=2, num_workers=0, **kw)
    dm.setup("fit")
    return dm


def test_png_layout(tmp_path):
    for split in ("train", "val"):
        for i in range(2):
            save_rgb(tmp_path / split / "images" / f"im{i}.jpg", 20, 30, i)
            m = np.zeros((20, 30), np.uint8)
            m[5:10, 5:10] = 2
            m[0, :] = 255
            (tmp_path / split / "masks").mkdir(parents=True, exist_ok=True)
            Image.fromarray(m, mode="L").save(tmp_path / split / "masks" / f"im{i}.png")
    dm = datamodule(tmp_path, "png", num_classes=3)
    item = dm.val_dataset[0]
    assert set(torch.unique(item["orig_mask"]).tolist()) == {0, 2, 255}
    assert item["orig_size"].tolist() == [20, 30]
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 3, 32, 32) and batch["image"].dtype == torch.float32
    assert batch["mask"].dtype == torch.int64 and set(torch.unique(batch["mask"]).tolist()) <= {0, 2, 255}


def test_png_errors_name_the_files(tmp_path):
    save_rgb(tmp_path / "train" / "images" / "a.png", 8, 8)
    (tmp_path / "train" / "masks").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"have no mask .*a\.png"):
        datamodule(tmp_path, "png")
    with pytest.raises(DatasetLayoutError, match="does not exist"):
        datamodule(tmp_path / "nope", "png")
    Image.fromarray(np.full((8, 8), 7, np.uint8)).save(tmp_path / "train" / "masks" / "a.png")
    save_rgb(tmp_path / "val" / "images" / "a.png", 8, 8)
    (tmp_path / "val" / "masks").mkdir(parents=True)
    Image.fromarray(np.full((8, 8), 0, np.uint8)).save(tmp_path / "val" / "masks" / "a.png")
    dm = datamodule(tmp_path, "png", num_classes=3)
    with pytest.raises(ValueError, match=r"a\.png: mask values \[7\] are >= num_classes=3"):
        dm.train_dataset[0]


def test_voc_palette_read_as_indices(tmp_path):
    base = tmp_path / "VOCdevkit" / "VOC2012"
    m = np.zeros((16, 16), np.uint8)
    m[2:6, 2:6] = 1
    m[8:12, 8:12] = 15
    m[0, :] = 255
    for split, ids in (("train", ["2007_000001"]), ("val", ["2007_000002"])):
        (base / "ImageSets" / "Segmentation").mkdir(parents=True, exist_ok=True)
        (base / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")
        for i in ids:
            save_rgb(base / "JPEGImages" / f"{i}.jpg", 16, 16)
            (base / "SegmentationClass").mkdir(parents=True, exist_ok=True)
            im = Image.fromarray(m, mode="P")
            im.putpalette(voc_palette())
            im.save(base / "SegmentationClass" / f"{i}.png")
    # the palette colour of class 15 (person) is (192,128,128): read as grey it would become some other value
    for root in (tmp_path, base):  # VOCdevkit/VOC2012 or its contents
        dm = datamodule(root, "voc", num_classes=21)
        orig = dm.val_dataset[0]["orig_mask"].numpy()
        assert set(np.unique(orig).tolist()) == {0, 1, 15, 255}
        assert (orig == m).all()


def test_cityscapes_label_ids_to_train_ids(tmp_path):
    label_ids = np.array([[0, 1, 7, 8], [26, 33, 24, 4]], np.uint8).repeat(4, 0).repeat(4, 1)  # 8x16
    expected = {0: 255, 1: 255, 7: 0, 8: 1, 26: 13, 33: 18, 24: 11, 4: 255}
    for split in ("train", "val"):
        save_rgb(tmp_path / "leftImg8bit" / split / "aachen" / "aachen_000000_000019_leftImg8bit.png", 8, 16)
        p = tmp_path / "gtFine" / split / "aachen" / "aachen_000000_000019_gtFine_labelIds.png"
        p.parent.mkdir(parents=True)
        Image.fromarray(label_ids).save(p)
    dm = datamodule(tmp_path, "cityscapes", num_classes=19)
    orig = dm.val_dataset[0]["orig_mask"].numpy()
    want = np.vectorize(expected.get)(label_ids)
    assert (orig == want).all()
    assert set(np.unique(orig).tolist()) == {0, 1, 11, 13, 18, 255}


def write_coco(root, split_dir="val2017", ann_name="instances_val2017.json"):
    img_dir = root / split_dir
    save_rgb(img_dir / "a.jpg", 20, 20)
    square = np.zeros((20, 20), np.uint8)
    square[10:20, 10:20] = 1
    rle = mask_utils.encode(np.asfortranarray(square))
    rle["counts"] = rle["counts"].decode()
    crowd = np.zeros((20, 20), np.uint8)
    crowd[0:2, 15:20] = 1
    unc = {"size": [20, 20], "counts": []}  # uncompressed RLE, column-major runs
    flat = crowd.flatten(order="F")
    val, run = 0, 0
    for v in flat:
        if v != val:
            unc["counts"].append(run)
            val, run = v, 0
        run += 1
    unc["counts"].append(run)
    anns = [
        {"id": 1, "image_id": 42, "category_id": 7, "iscrowd": 0, "area": 100.0, "bbox": [0, 0, 10, 10],
         "segmentation": [[0, 0, 10, 0, 10, 10, 0, 10]]},  # polygon, big
        {"id": 2, "image_id": 42, "category_id": 90, "iscrowd": 0, "area": 100.0, "bbox": [10, 10, 10, 10],
         "segmentation": rle},
        {"id": 3, "image_id": 42, "category_id": 3, "iscrowd": 1, "area": 10.0, "bbox": [15, 0, 5, 2],
         "segmentation": unc},
    ]
    data = {"images": [{"id": 42, "file_name": "a.jpg", "height": 20, "width": 20}], "annotations": anns,
            "categories": [{"id": 3, "name": "car"}, {"id": 7, "name": "train"}, {"id": 90, "name": "brush"}]}
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "annotations" / ann_name).write_text(json.dumps(data))


def test_coco_rasterised_with_category_mapping(tmp_path):
    write_coco(tmp_path, "train2017", "instances_train2017.json")
    write_coco(tmp_path, "val2017", "instances_val2017.json")
    dm = datamodule(tmp_path, "coco", num_classes=4)
    orig = dm.val_dataset[0]["orig_mask"].numpy()
    # category ids 3, 7, 90 -> classes 1, 2, 3 ; crowd -> 255 ; background 0
    assert orig[5, 5] == 2 and orig[15, 15] == 3 and orig[0, 17] == 255 and orig[15, 2] == 0
    assert set(np.unique(orig).tolist()) == {0, 2, 3, 255}
    assert dm.class_names == ["background", "car", "train", "brush"]


def test_coco_file_name_outside_folder_rejected(tmp_path):
    write_coco(tmp_path, "val2017", "instances_val2017.json")
    data = json.loads((tmp_path / "annotations" / "instances_val2017.json").read_text())
    data["images"][0]["file_name"] = "../secret.jpg"
    (tmp_path / "annotations" / "instances_val2017.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="points outside the image folder"):
        coco_fmt.load_split(tmp_path, "val")


def test_class_mapping_lookup_table(tmp_path):
    for split in ("train", "val"):
        save_rgb(tmp_path / split / "images" / "a.png", 4, 4)
        m = np.array([[10, 20, 30, 255]] * 4, np.uint8)
        (tmp_path / split / "masks").mkdir(parents=True)
        Image.fromarray(m).save(tmp_path / split / "masks" / "a.png")
    dm = datamodule(tmp_path, "png", class_mapping={10: 0, 20: 1, 30: 1}, num_classes=2)
    assert dm.val_dataset[0]["orig_mask"][0].tolist() == [0, 1, 1, 255]
    dm = datamodule(tmp_path, "png", class_mapping={10: 0, 20: 1}, num_classes=2)
    with pytest.raises(ValueError, match=r"a\.png: label values \[30\] are not in the class mapping"):
        dm.val_dataset[0]


def test_shapes_png_and_coco_layouts_agree(shapes_root):
    png = datamodule(shapes_root, "png", num_classes=5)
    coco = datamodule(shapes_root, "coco", num_classes=5)
    assert len(png.val_dataset) == len(coco.val_dataset) == 8
    labels = set()
    for i in range(len(png.val_dataset)):
        a, b = png.val_dataset[i]["orig_mask"], coco.val_dataset[i]["orig_mask"]
        assert torch.equal(a, b)
        labels |= set(torch.unique(a).tolist())
    assert labels <= {0, 1, 2, 3, 4, 255} and len(labels - {255}) >= 3


def test_regenerating_with_other_parameters_leaves_no_stale_files(tmp_path):
    generate_shapes(tmp_path, num_train=5, num_val=2, image_size=32, seed=1)
    generate_shapes(tmp_path, num_train=3, num_val=2, image_size=32, seed=1)
    assert sorted(p.name for p in (tmp_path / "train" / "images").iterdir()) == ["00000.png", "00001.png", "00002.png"]
    assert len(json.loads((tmp_path / "annotations" / "instances_train.json").read_text())["images"]) == 3


def test_shapes_generation_is_deterministic(tmp_path):
    a = generate_shapes(tmp_path / "a", num_train=3, num_val=2, image_size=32, seed=5)
    b = generate_shapes(tmp_path / "b", num_train=3, num_val=2, image_size=32, seed=5)
    for rel in ("train/images/00002.png", "val/masks/00001.png", "annotations/instances_val.json"):
        assert (a / rel).read_bytes() == (b / rel).read_bytes()


def test_eval_keeps_aspect_ratio(tmp_path):
    for split in ("train", "val"):
        save_rgb(tmp_path / split / "images" / "a.png", 40, 80)
        m = np.zeros((40, 80), np.uint8)
        m[:, 40:] = 1
        (tmp_path / split / "masks").mkdir(parents=True)
        Image.fromarray(m).save(tmp_path / split / "masks" / "a.png")
    dm = datamodule(tmp_path, "png", num_classes=2)
    item = dm.val_dataset[0]
    assert item["image"].shape == (3, 32, 32)
    assert item["valid_size"].tolist() == [16, 32]  # 40x80 -> 16x32, not squashed to 32x32
    assert (item["mask"][16:] == 255).all() and (item["mask"][:16, 16:] == 1).all()
    assert item["orig_mask"].shape == (40, 80)


def test_crop_size_trains_on_crops_of_the_full_scale(tmp_path):
    """crop_size: training samples are random crops of the image at image_size (the same pixels, not a resize);
    evaluation stays whole."""
    for split in ("train", "val"):
        save_rgb(tmp_path / split / "images" / "a.png", 64, 64)
        m = np.add.outer(np.arange(64) // 16, np.arange(64) // 16).astype(np.uint8)  # 7 classes in 16 px tiles
        (tmp_path / split / "masks").mkdir(parents=True)
        Image.fromarray(m).save(tmp_path / split / "masks" / "a.png")
    dm = datamodule(tmp_path, "png", num_classes=7, crop_size=16, augmentation_preset="light")
    full = np.add.outer(np.arange(32) // 8, np.arange(32) // 8)  # the mask at image_size 32
    crops = [dm.train_dataset[0] for _ in range(8)]
    for item in crops:
        assert item["image"].shape == (3, 16, 16) and item["mask"].shape == (16, 16)
        mask = item["mask"].numpy()
        windows = [full[y:y + 16, x:x + 16] for y in range(17) for x in range(17)]
        windows += [w[:, ::-1] for w in windows]  # the light preset also flips
        assert any((mask == w).all() for w in windows)  # a window of the image at 32 px, at that scale
    assert dm.val_dataset[0]["image"].shape == (3, 32, 32)
    with pytest.raises(ValueError, match="crop_size must be between 16 and image_size"):
        SegmentationDataModule(tmp_path, image_size=32, crop_size=48)


def _focus_draws(mask, classes, p_focus, n=200, size=20):
    """n FocusCrop draws of ``mask`` (seeded); the image carries each pixel's (x, y), so a crop's image says where
    the crop was taken from and that the image was cropped with the mask."""
    import albumentations as A

    from autotimm.data.transforms import FocusCrop

    h, w = mask.shape
    yx = np.stack([np.broadcast_to(np.arange(w), (h, w)), np.broadcast_to(np.arange(h)[:, None], (h, w)),
                   np.zeros((h, w), int)], -1).astype(np.uint8)
    tf = A.Compose([FocusCrop(size, classes, p_focus)], seed=0)
    outs = [tf(image=yx, mask=mask) for _ in range(n)]
    for o in outs:
        assert o["image"].shape == (size, size, 3) and o["mask"].shape == (size, size)
        x0, y0 = int(o["image"][0, 0, 0]), int(o["image"][0, 0, 1])
        assert (o["mask"] == mask[y0:y0 + size, x0:x0 + size]).all()  # image and mask cut at the same place
    return [o["mask"] for o in outs]


def test_focus_crop_holds_the_rare_class():
    """crop_focus_classes: every crop holds the one pole pixel at p=1 (a random 20 px crop of the 100 px image holds
    it 0.9% of the time: 6/81 x 10/81), about half at p=0.5, and a class is drawn before a pixel: one pixel of class
    2 beside 5,000 of class 7 gets half the focused crops, class 0 included (albumentations'
    CropNonEmptyMaskIfExists never focuses 0)."""
    mask = np.full((100, 100), 3, np.uint8)
    mask[90, 5] = 2
    assert all((m == 2).any() for m in _focus_draws(mask, [2], 1.0))
    assert sum((m == 2).any() for m in _focus_draws(mask, [2], 0.0)) < 10
    assert 70 <= sum((m == 2).any() for m in _focus_draws(mask, [2], 0.5)) <= 130
    mask[:, 50:] = 7
    mask[90, 5], mask[2, 2] = 0, 2  # one pixel of 0, one of 2, 5,000 of 7 far from both
    hits = [(m == 0).any() for m in _focus_draws(mask, [0, 2, 7], 1.0, n=300)]
    assert 70 <= sum(hits) <= 130  # a third of the focused crops: class 0 drawn like the others
    assert all((m == 0).any() | (m == 2).any() | (m == 7).any() for m in _focus_draws(mask, [0, 2, 7], 1.0))
    assert len(_focus_draws(np.full((100, 100), 3, np.uint8), [2], 1.0)) == 200  # none present: random crops


def test_focus_crop_datamodule_and_errors(tmp_path):
    """The data module's crop_focus_classes reach the training crops; bad settings name the field."""
    for split in ("train", "val"):
        save_rgb(tmp_path / split / "images" / "a.png", 64, 64)
        m = np.zeros((64, 64), np.uint8)
        m[60:62, 2:4] = 5  # 4 pixels of class 5 in a corner: 1 px at image_size 32
        (tmp_path / split / "masks").mkdir(parents=True)
        Image.fromarray(m).save(tmp_path / split / "masks" / "a.png")
    dm = datamodule(tmp_path, "png", num_classes=7, crop_size=16, augmentation_preset="light",
                    crop_focus_classes=[5], crop_focus_p=1.0)
    assert all((dm.train_dataset[0]["mask"] == 5).any() for _ in range(20))
    with pytest.raises(ValueError, match="crop_focus_classes needs crop_size smaller than image_size"):
        SegmentationDataModule(tmp_path, image_size=32, crop_focus_classes=[5])
    with pytest.raises(ValueError, match=r"crop_focus_classes: class ids must be in \[0, 7\), got \[7\]"):
        SegmentationDataModule(tmp_path, image_size=32, crop_size=16, num_classes=7, crop_focus_classes=[7])
    with pytest.raises(ValueError, match="crop_focus_classes: give at least one class id"):
        SegmentationDataModule(tmp_path, image_size=32, crop_size=16, crop_focus_classes=[])
    with pytest.raises(ValueError, match="crop_focus_p must be in"):
        SegmentationDataModule(tmp_path, image_size=32, crop_size=16, crop_focus_classes=[5], crop_focus_p=1.5)


# ------------------------------------------------------------------------------------------------ CamVid
CAMVID = Path(__file__).resolve().parents[2] / "shared" / "data" / "camvid"


@pytest.mark.skipif(not CAMVID.is_dir(), reason="../shared/data/camvid is not beside the checkout")
def test_camvid_real_files_lists_and_void():
    """The real data: the list files' /SegNet/CamVid/... paths resolve inside the root, labels keep 0..10 and void
    (11) becomes ignore_index."""
    from autotimm.data.formats import camvid

    train = camvid.load_split(CAMVID, "train", ignore_index=255)
    val = camvid.load_split(CAMVID, "val", ignore_index=255)
    assert (len(train.samples), len(val.samples)) == (367, 101)
    first = train.samples[0]
    assert first.image_path == (CAMVID / "train" / "0001TP_006690.png").resolve()
    assert first.mask_path == (CAMVID / "trainannot" / "0001TP_006690.png").resolve()
    assert train.class_names[2] == "pole" and len(train.class_names) == 11
    dm = SegmentationDataModule(CAMVID, format="camvid", image_size=96, batch_size=2, num_workers=0, num_classes=11)
    dm.setup("validate")
    raw = train.read_mask(first)
    assert set(np.unique(raw).tolist()) <= set(range(12))
    item = dm.val_dataset[0]
    orig = item["orig_mask"].numpy()
    raw_val = val.read_mask(val.samples[0])
    assert orig.shape == (360, 480)
    assert np.array_equal(orig == 255, raw_val == 11) and np.array_equal(orig[raw_val < 11], raw_val[raw_val < 11])


def write_camvid(root, with_list=True, bad_value=False, missing_label=False):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        (root / split).mkdir(parents=True)
        (root / f"{split}annot").mkdir()
        lines = []
        for i in range(2):
            Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(root / split / f"f{i}.png")
            lab = rng.integers(0, 12, (24, 32), dtype=np.uint8)
            if bad_value and i == 1:
                lab[0, 0] = 13
            if not (missing_label and i == 1):
                Image.fromarray(lab).save(root / f"{split}annot" / f"f{i}.png")
            lines.append(f"/SegNet/CamVid/{split}/f{i}.png /SegNet/CamVid/{split}annot/f{i}.png")
        if with_list:
            (root / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return root


def test_camvid_generated_tree_and_named_errors(tmp_path):
    from autotimm.data.formats import camvid

    root = write_camvid(tmp_path / "a", with_list=False)
    assert [s.image_id for s in camvid.load_split(root, "train").samples] == ["f0", "f1"]
    root = write_camvid(tmp_path / "b", missing_label=True)
    with pytest.raises(FileNotFoundError, match=r"train.txt line 2: label file .*trainannot/f1.png does not exist"):
        camvid.load_split(root, "train")
    root = write_camvid(tmp_path / "c", with_list=False, missing_label=True)
    with pytest.raises(ValueError, match=r"1 image\(s\) in .*train have no label of the same name"):
        camvid.load_split(root, "train")
    assert_second_label_refused(write_camvid(tmp_path / "d", bad_value=True), "camvid", 11,
                                r"trainannot/f1.png: label values \[13\] are not in the class mapping")


def assert_second_label_refused(root, fmt, num_classes, match):
    """Reading the second training sample fails with an error naming its label file and the bad values."""
    dm = SegmentationDataModule(root, format=fmt, image_size=32, batch_size=2, num_workers=0, num_classes=num_classes)
    dm.setup("fit")
    with pytest.raises(ValueError, match=match):
        dm.train_dataset[1]


# ------------------------------------------------------------------------------------------------ ADE20K
def write_ade20k(root, missing_label=False, bad_value=False):
    """A tree in ADEChallengeData2016's layout: images/{training,validation}/*.jpg, annotations/.../*.png."""
    rng = np.random.default_rng(0)
    base = root / "ADEChallengeData2016"
    for folder in ("training", "validation"):
        (base / "images" / folder).mkdir(parents=True)
        (base / "annotations" / folder).mkdir(parents=True)
        for i in range(2):
            name = f"ADE_{folder[:5]}_{i:08d}"
            Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(base / "images" / folder /
                                                                                    f"{name}.jpg")
            lab = np.zeros((20, 30), np.uint8)
            lab[:, 10:20], lab[:, 20:] = 1, 150  # other, wall, flag
            if bad_value and i == 1:
                lab[0, 0] = 151
            if not (missing_label and i == 1):
                Image.fromarray(lab).save(base / "annotations" / folder / f"{name}.png")
    return root


def test_ade20k_generated_tree_labels_and_named_errors(tmp_path):
    from omegaconf import OmegaConf

    from autotimm.data.formats import ade20k

    root = write_ade20k(tmp_path / "a")
    cfg = OmegaConf.load(Path(__file__).resolve().parents[1] / "conf" / "dataset" / "ade20k.yaml")
    assert cfg.class_names == ade20k.ADE20K_CLASSES and len(cfg.class_names) == cfg.num_classes == 150
    dm = SegmentationDataModule(root, format="ade20k", image_size=32, batch_size=2, num_workers=0, num_classes=150,
                                augmentation_preset="light")
    dm.setup("fit")
    assert [s.image_id for s in dm.train_dataset.split.samples] == ["ADE_train_00000000", "ADE_train_00000001"]
    assert dm.class_names[0] == "wall" and dm.class_names[149] == "flag"
    # 0 ("other") -> ignore, 1 -> 0 (wall), 150 -> 149 (flag), at the original resolution
    orig = dm.val_dataset[0]["orig_mask"]
    assert orig.shape == (20, 30)
    assert (orig[:, :10] == 255).all() and (orig[:, 10:20] == 0).all() and (orig[:, 20:] == 149).all()
    # the ADEChallengeData2016 folder itself works as the root too
    assert len(ade20k.load_split(root / "ADEChallengeData2016", "val").samples) == 2
    root = write_ade20k(tmp_path / "b", missing_label=True)
    with pytest.raises(ValueError, match=r"1 image\(s\) in .*images/training have no label <name>.png"):
        ade20k.load_split(root, "train")
    with pytest.raises(ValueError, match="unknown split 'test'"):
        ade20k.load_split(root, "test")
    assert_second_label_refused(write_ade20k(tmp_path / "c", bad_value=True), "ade20k", 150,
                                r"ADE_train_00000001.png: label values \[151\] are not in the class mapping")
