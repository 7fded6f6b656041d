"""export.py: TorchScript and ONNX pipelines (semantic class maps, instance detections) equal the eager model."""

import json

import pytest
import torch
from test_predict import save

from autotimm import FeatureBackboneConfig, InstanceSegmentor, SemanticSegmentor
from autotimm.export import INSTANCE_OUTPUTS, export_model

TINY = FeatureBackboneConfig("test_resnet", pretrained=False)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_export_matches_eager(tmp_path, fmt):
    from test_cli import run

    model = SemanticSegmentor(TINY, num_classes=4).eval()
    save(model, tmp_path / "m.ckpt")
    out = tmp_path / ("m.pt" if fmt == "torchscript" else "m.onnx")
    run("export.py", f"ckpt_path={tmp_path / 'm.ckpt'}", f"format={fmt}", f"output={out}", "image_size=64",
        f"paths.log_dir={tmp_path}/logs")
    for shape in [(1, 3, 64, 64), (2, 3, 96, 128)]:  # other batch sizes and image sizes than the trace
        x = torch.randn(*shape)
        want = model.predict(x)
        if fmt == "torchscript":
            got = torch.jit.load(str(out))(x)
        else:
            import onnxruntime as ort

            got = torch.from_numpy(ort.InferenceSession(str(out)).run(None, {"images": x.numpy()})[0])
        assert got.shape == want.shape and torch.equal(got.long(), want)
    # the preprocessing travels with the exported file
    if fmt == "torchscript":
        files = {"preprocess.json": ""}
        torch.jit.load(str(out), _extra_files=files)
        meta = files["preprocess.json"]
    else:
        import onnx

        meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}["preprocess"]
    assert json.loads(meta) == model.preprocess


def instance_model(**kw):
    torch.manual_seed(0)
    model = InstanceSegmentor(TINY, num_classes=3, fpn_channels=32, head_num_convs=1,
                              mask_head={"_target_": "autotimm.heads.MaskHead", "conv_channels": 16}, **kw).eval()
    with torch.no_grad():  # spread-out scores: at score_thresh 0.4, 5 to 19 detections per image, far from the cap
        torch.manual_seed(0)
        model.head.cls_logits.weight.normal_(0, 0.2)
        model.head.cls_logits.bias.fill_(-5.0)
    return model


def run_exported(path, fmt):
    if fmt == "torchscript":
        module = torch.jit.load(str(path))
        return lambda x: module(x)
    import onnxruntime as ort

    session = ort.InferenceSession(str(path))
    names = [o.name for o in session.get_outputs()]
    assert names == INSTANCE_OUTPUTS
    return lambda x: [torch.from_numpy(a) for a in session.run(None, {"images": x.numpy()})]


def assert_same_detections(got, want, size):
    img, boxes, scores, labels, masks = got
    assert img.dtype == labels.dtype == torch.int64 and masks.dtype == torch.uint8
    assert masks.shape[1:] == size and boxes.shape[1:] == (4,)
    assert torch.equal(img, torch.sort(img).values)  # grouped by image
    assert len(img) == sum(len(w["boxes"]) for w in want)
    for i, w in enumerate(want):
        sel = img == i
        assert torch.equal(labels[sel], w["labels"])
        torch.testing.assert_close(boxes[sel], w["boxes"], atol=1e-4, rtol=0)
        torch.testing.assert_close(scores[sel], w["scores"], atol=1e-5, rtol=0)
        assert torch.equal(masks[sel], w["masks"])


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_instance_export_matches_eager(tmp_path, fmt):
    """The exported pipeline gives the eager model's detections after NMS (boxes, scores, labels, masks) at batch
    sizes, image sizes and detection counts other than the traced ones."""
    from test_cli import run

    model = instance_model(score_thresh=0.4, max_detections_per_image=30)
    save(model, tmp_path / "i.ckpt")
    out = tmp_path / ("i.pt" if fmt == "torchscript" else "i.onnx")
    proc = run("export.py", f"ckpt_path={tmp_path / 'i.ckpt'}", f"format={fmt}", f"output={out}", "image_size=64",
               f"paths.log_dir={tmp_path}/logs")
    assert "image_index, boxes, scores, labels, masks" in proc.stdout + proc.stderr
    exported = run_exported(out, fmt)
    counts = set()
    torch.manual_seed(1)
    for shape in [(1, 3, 64, 64), (3, 3, 96, 128), (2, 3, 70, 90)]:
        x = torch.randn(*shape)
        want = model.predict(x)
        counts |= {len(w["boxes"]) for w in want}
        assert_same_detections(exported(x), want, shape[2:])
    assert len(counts) > 1 and 0 < min(counts) and max(counts) < 30  # varied counts, none cut at the cap


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_instance_export_with_no_detections_and_a_capped_count(tmp_path, fmt):
    none = instance_model(score_thresh=1.0)
    path = export_model(none, tmp_path / f"none.{fmt}", fmt, image_size=64)
    got = run_exported(path, fmt)(torch.randn(2, 3, 64, 96))
    assert [tuple(t.shape) for t in got] == [(0,), (0, 4), (0,), (0,), (0, 64, 96)]
    capped = instance_model(score_thresh=0.0, max_detections_per_image=7, mask_size=20, roi_pool_size=7)
    path = export_model(capped, tmp_path / f"capped.{fmt}", fmt, image_size=64)
    x = torch.randn(2, 3, 48, 80)
    got = run_exported(path, fmt)(x)
    assert torch.bincount(got[0]).tolist() == [7, 7]
    assert_same_detections(got, capped.predict(x), (48, 80))


def test_onnx_export_of_an_unsupported_op_names_the_backbone(tmp_path):
    # timm's ViT resizes its position embedding with antialiased bicubic interpolation, which ONNX opset 17 lacks
    model = SemanticSegmentor(FeatureBackboneConfig("test_vit", pretrained=False), num_classes=2).eval()
    with pytest.raises(RuntimeError, match=r"backbone test_vit.*_upsample_bicubic2d_aa.*format=torchscript"):
        export_model(model, tmp_path / "v.onnx", "onnx", image_size=64)
    assert not (tmp_path / "v.onnx").exists()
    path = export_model(model, tmp_path / "v.pt", "torchscript", image_size=64)
    x = torch.randn(1, 3, 96, 128)
    assert torch.equal(torch.jit.load(str(path))(x), model.predict(x))


def test_export_bad_input_names_the_field(tmp_path):
    from omegaconf import OmegaConf

    from autotimm.cli.export import export

    with pytest.raises(ValueError, match=r"format: unknown 'tflite'; valid: \['onnx', 'torchscript'\]"):
        export_model(SemanticSegmentor(TINY, num_classes=2), tmp_path / "m.tflite", "tflite")
    cfg = OmegaConf.create({"ckpt_path": str(tmp_path / "missing.ckpt"), "format": "onnx", "output": None,
                            "image_size": 64})
    with pytest.raises(FileNotFoundError, match="ckpt_path: .*missing.ckpt does not exist"):
        export(cfg)
