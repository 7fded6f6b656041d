"""export.py: TorchScript and ONNX semantic pipelines equal the eager model."""

import pytest
import torch
from test_predict import save

from autotimm import FeatureBackboneConfig, InstanceSegmentor, SemanticSegmentor

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


def test_instance_export_is_a_clear_error(tmp_path):
    from omegaconf import OmegaConf

    from autotimm.cli.export import export

    save(InstanceSegmentor(TINY, num_classes=2, fpn_channels=32, head_num_convs=1), tmp_path / "i.ckpt")
    cfg = OmegaConf.create({"ckpt_path": str(tmp_path / "i.ckpt"), "format": "torchscript", "output": None,
                            "image_size": 64})
    with pytest.raises(NotImplementedError, match="instance checkpoints cannot be exported yet"):
        export(cfg)
