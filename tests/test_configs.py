"""Compose every option of every config group and instantiate what it configures."""

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict

import autotimm
from autotimm.cli.common import instantiate_group

CONF = Path(__file__).resolve().parents[1] / "conf"
GROUPS = ["backbone", "head", "loss", "dataset", "augmentation", "trainer", "model", "arch", "logger", "callbacks",
          "experiment", "debug", "hparams_search", "launcher", "paths", "hydra"]


def options(group):
    """Every option of a group; for experiment also the datasets' recipes (experiment/recipe/shapes.yaml ->
    "recipe/shapes"). Other nested folders (dataset/coco_task/) are pieces the options include, not options."""
    files = (CONF / group).glob("**/*.yaml" if group == "experiment" else "*.yaml")
    return sorted(str(p.relative_to(CONF / group).with_suffix("")) for p in files)


def compose_cfg(tmp_path, overrides, config_name="train"):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path)
        cfg.paths.data_dir = str(tmp_path / "data")
        cfg.hydra.runtime.output_dir = str(tmp_path)
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    return cfg


CASES = [(g, o) for g in GROUPS for o in options(g) if g not in ("paths", "hydra")]


def is_mask_head(option: str) -> bool:
    """Heads are discovered, not listed: a head whose target is a ``RoIMaskHead`` belongs to the instance model."""
    from hydra.utils import get_class
    from omegaconf import OmegaConf

    return issubclass(get_class(OmegaConf.load(CONF / "head" / f"{option}.yaml")._target_), autotimm.heads.RoIMaskHead)


# options that belong to the instance model are composed with model=instance
INSTANCE_OPTIONS = {("head", o) for o in options("head") if is_mask_head(o)} | {("arch", o) for o in options("arch")} \
    | {
    ("loss", "instance"), ("dataset", "shapes_instance"), ("model", "instance"), ("experiment", "instance_shapes"),
    ("experiment", "recipe/shapes_instance"), ("dataset", "shapes_dense"), ("experiment", "instance_dense"),
    ("experiment", "ablate_mask_size"), ("hparams_search", "optuna_instance"), ("experiment", "ablate_instance_arch"),
    ("dataset", "dsb2018"), ("dataset", "instance_png"), ("experiment", "dsb2018")}


def test_every_group_has_options():
    for g in GROUPS:
        assert options(g), f"conf/{g}/ is empty"


@pytest.mark.parametrize("group, option", CASES, ids=[f"{g}={o}" for g, o in CASES])
def test_compose_and_instantiate(tmp_path, group, option):
    overrides = [f"{group}={option}"]
    instance = (group, option) in INSTANCE_OPTIONS
    if instance and (group not in ("model", "experiment") or option.startswith("recipe/")):
        overrides.append("model=instance")
    if group not in ("backbone", "experiment", "hparams_search"):
        overrides.append("backbone=test_resnet")  # keep it small; experiments pick their own backbone
    cfg = compose_cfg(tmp_path, overrides)
    if group in ("experiment", "hparams_search"):
        with open_dict(cfg):
            cfg.backbone.pretrained = False  # no download in tests; the config itself keeps pretrained: true
    if group == "backbone":
        with open_dict(cfg):
            cfg.backbone.pretrained = False
    dm = instantiate(cfg.dataset)
    want_dm = autotimm.InstanceSegmentationDataModule if instance else autotimm.SegmentationDataModule
    assert isinstance(dm, want_dm)
    assert dm.augmentation_preset == cfg.dataset.augmentation_preset
    # num_classes (and ignore_index) flow from the dataset
    assert cfg.model.num_classes == cfg.dataset.num_classes
    if not instance:
        assert cfg.model.ignore_index == cfg.dataset.ignore_index
    if group in ("backbone", "head", "loss", "model", "arch", "experiment", "dataset"):
        model = instantiate(cfg.model)
        size = 64 if cfg.backbone.model_name != "vit_small_patch16_224" else cfg.dataset.image_size
        x = torch.randn(1, 3, size, size)
        if instance:
            from hydra.utils import get_class

            assert isinstance(model, autotimm.InstanceSegmentor)
            assert isinstance(model.model, get_class(cfg.arch._target_))  # the arch YAML's target is what trains
            # mask_size means the same for every architecture: the head group's
            mask_size = getattr(model.model, "mask_size", None) or model.model.mask_head.mask_size
            assert mask_size == cfg.head.mask_size
            if isinstance(model.model, autotimm.models.FCOSInstanceModel):
                assert model.mask_loss_weight == cfg.loss.mask_loss_weight
            assert isinstance(model.predict(x), list)
        else:
            assert isinstance(model, autotimm.SemanticSegmentor)
            with torch.no_grad():
                out = model.eval()(x)
            assert out.shape == (1, cfg.dataset.num_classes, size, size)
    if group in ("trainer", "callbacks", "logger", "debug"):
        if group == "trainer" and option == "gpu" and not torch.cuda.is_available():
            with open_dict(cfg):
                cfg.trainer.accelerator = "cpu"
                cfg.trainer.precision = "bf16-mixed"
        if group == "trainer" and option == "ddp":
            with open_dict(cfg):
                cfg.trainer.accelerator = "cpu"
        callbacks = instantiate_group(cfg.get("callbacks"))
        loggers = instantiate_group(cfg.get("logger"))
        trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
        assert isinstance(trainer, autotimm.AutoTrainer)
    if group == "head":  # the YAML's target is what the model really holds
        from hydra.utils import get_class

        want = get_class(cfg.head._target_)
        assert isinstance(model.mask_head if instance else model.head, want)
    if group == "loss" and not instance:
        assert model.loss_type == option


def test_command_line_style_overrides(tmp_path):
    cfg = compose_cfg(tmp_path, ["head=fcn", "loss=tversky", "backbone=test_resnet"])
    model = instantiate(cfg.model)
    assert isinstance(model.head, autotimm.FCNHead) and isinstance(model.criterion, autotimm.TverskyLoss)
    assert (model.criterion.alpha, model.criterion.beta) == (0.3, 0.7)
    cfg = compose_cfg(tmp_path, ["loss.dice_weight=0.5", "backbone=test_resnet"])
    model = instantiate(cfg.model)
    assert model.criterion.dice_weight == 0.5 and model.criterion.ce_weight == 1.0
    assert model.hparams.loss["dice_weight"] == 0.5
    model = instantiate(compose_cfg(tmp_path, ["model.aux_weight=0.4", "backbone=test_resnet"]).model)
    assert isinstance(model.model.aux_head, autotimm.FCNHead) and model.aux_weight == 0.4
    assert instantiate(compose_cfg(tmp_path, ["backbone=test_resnet"]).model).model.aux_head is None
    model = instantiate(compose_cfg(tmp_path, ["model.paste_classes=[2,4]", "backbone=test_resnet"]).model)
    assert model.paste_classes == [2, 4] and model.paste_prob == 0.5
    model = instantiate(compose_cfg(tmp_path, ["loss.ohem_thresh=0.7", "backbone=test_resnet"]).model)
    assert isinstance(model.criterion.ce, autotimm.losses.OhemCrossEntropyLoss) and model.criterion.ce.thresh == 0.7
    cfg = compose_cfg(tmp_path, ["backbone=convnext_tiny"])
    assert cfg.backbone.model_name == "convnext_tiny"
    assert cfg.backbone.pretrained is False  # shapes dataset trains from scratch
    cfg = compose_cfg(tmp_path, ["backbone=convnext_tiny", "dataset=cityscapes"])
    assert cfg.backbone.pretrained is True and cfg.model.num_classes == 19


def test_dataset_coco_follows_the_model(tmp_path):
    cfg = compose_cfg(tmp_path, ["dataset=coco", "backbone=test_resnet"])
    dm = instantiate(cfg.dataset)
    assert type(dm) is autotimm.SegmentationDataModule and dm.format == "coco" and cfg.model.num_classes == 81
    cfg = compose_cfg(tmp_path, ["model=instance", "dataset=coco", "backbone=test_resnet", "dataset.batch_size=2"])
    dm = instantiate(cfg.dataset)
    assert type(dm) is autotimm.InstanceSegmentationDataModule and dm.batch_size == 2
    assert cfg.model.num_classes == 80
    assert isinstance(instantiate(cfg.model), autotimm.InstanceSegmentor)
    assert compose_cfg(tmp_path, ["model=instance", "dataset=coco"]).backbone.pretrained is True  # real data


def test_model_and_dataset_kinds_must_match(tmp_path):
    from autotimm.cli.common import check_pairing

    cfg = compose_cfg(tmp_path, ["model=instance", "dataset=shapes", "backbone=test_resnet"])
    with pytest.raises(ValueError, match="InstanceSegmentor cannot train on ShapesDataModule: it needs an instance"):
        check_pairing(instantiate(cfg.model), instantiate(cfg.dataset))


def test_instance_overrides(tmp_path):
    cfg = compose_cfg(tmp_path, ["model=instance", "head.mask_size=14", "head.roi_pool_size=7",
                                 "loss.mask_loss_weight=2.0", "backbone=test_resnet"])
    model = instantiate(cfg.model)
    assert model.mask_head.mask_size == 14 and model.mask_head.roi_pool_size == 7 and model.mask_loss_weight == 2.0
    assert cfg.optimized_metric == "val/mask_map_50"


def _stage_channels(cfg) -> list[int]:
    cfg.backbone.pretrained = False
    return [int(c) for c in instantiate(cfg.model).backbone.channels]


def test_shapes_recipes_narrow_resnet18_only(tmp_path):
    """The generated-shapes recipes run ResNet-18 at half width (recipe.backbone_kwargs, read by
    conf/backbone/resnet18.yaml); other backbones, real datasets and the heads ablation keep full width."""
    half = {"channels": [32, 64, 128, 256]}
    cfg = compose_cfg(tmp_path, [])
    assert OmegaConf.to_container(cfg.backbone, resolve=True)["extra_kwargs"] == half
    assert _stage_channels(cfg) == [64, 32, 64, 128, 256]
    cfg = compose_cfg(tmp_path, ["experiment=instance_shapes"])
    assert _stage_channels(cfg) == [64, 32, 64, 128, 256] and cfg.head.conv_channels == 64
    for overrides in (["dataset=camvid"], ["experiment=camvid_pretrained"], ["experiment=ablate_heads"]):
        cfg = compose_cfg(tmp_path, overrides)
        assert _stage_channels(cfg) == [64, 64, 128, 256, 512], overrides
    for overrides in (["experiment=camvid"], ["experiment=camvid_60min"]):  # from scratch on CamVid: half width
        assert _stage_channels(compose_cfg(tmp_path, overrides)) == [64, 32, 64, 128, 256], overrides
    cfg = compose_cfg(tmp_path, ["backbone=test_resnet"])  # another backbone: its own width, no extra arguments
    assert "extra_kwargs" not in cfg.backbone and cfg.backbone.pretrained is False
    assert compose_cfg(tmp_path, ["experiment=ablate_heads"]).dataset.image_size == 96


def test_recipes_live_in_experiment_and_follow_the_dataset(tmp_path):
    """One concept per file: dataset configs hold data only; a dataset's recipe is experiment/recipe/<dataset>.yaml,
    which the defaults select with it; an explicit experiment replaces it; real datasets keep the configs' defaults
    (experiment=camvid is a recipe one asks for by name)."""
    from omegaconf import OmegaConf

    for f in (CONF / "dataset").glob("*.yaml"):
        assert not {"model", "trainer", "backbone"} & set(OmegaConf.load(f)), f"{f.name} sets more than data"
    cfg = compose_cfg(tmp_path, [])
    assert (cfg.model.lr, cfg.trainer.max_epochs, cfg.backbone.pretrained) == (6e-3, 16, False)
    assert (cfg.dataset.image_size, cfg.dataset.batch_size, cfg.trainer.check_val_every_n_epoch) == (64, 16, 2)
    cfg = compose_cfg(tmp_path, ["model=instance"])
    assert (cfg.model.lr, cfg.trainer.check_val_every_n_epoch, cfg.backbone.pretrained) == (1e-3, 10, False)
    cfg = compose_cfg(tmp_path, ["experiment=ablate_mask_size"])
    assert cfg.model.lr == 1e-3 and cfg.task_name == "ablate_mask_size" and cfg.dataset.num_classes == 4
    cfg = compose_cfg(tmp_path, ["dataset=cityscapes"])
    assert "lr" not in cfg.model and cfg.backbone.pretrained is True and cfg.trainer.max_epochs == 50
    cfg = compose_cfg(tmp_path, ["dataset=camvid"])  # a real dataset: no recipe unless asked for
    assert "lr" not in cfg.model and cfg.backbone.pretrained is True and cfg.dataset.crop_size is None
    cfg = compose_cfg(tmp_path, ["experiment=camvid"])  # the from-scratch CamVid recipe switches the dataset
    assert (cfg.dataset.format, cfg.dataset.image_size, cfg.dataset.crop_size) == ("camvid", 360, 240)
    assert (cfg.backbone.pretrained, cfg.model.lr, cfg.backbone.output_stride) == (False, 3e-3, "auto")
    assert (cfg.trainer.max_epochs, cfg.head.aspp_channels, cfg.head.decoder_channels) == (32, 128, 128)
    assert cfg.trainer.check_val_every_n_epoch == 16  # two val passes, the second at the end
    assert cfg.dataset.data_dir.endswith("/camvid")
    cfg = compose_cfg(tmp_path, ["experiment=camvid_60min"])  # the same recipe, longer
    assert (cfg.dataset.image_size, cfg.dataset.crop_size, cfg.trainer.max_epochs) == (360, 240, 64)
    assert cfg.trainer.check_val_every_n_epoch == 16  # four val passes, the last at the end
    cfg = compose_cfg(tmp_path, ["experiment=camvid_pretrained"])  # the full width the ImageNet weights have
    assert (cfg.backbone.pretrained, cfg.model.lr, cfg.dataset.crop_size) == (True, 1e-3, 160)
    assert cfg.head.aspp_channels == 256



@pytest.mark.parametrize("head", ["deeplabv3plus", "unet", "fcn", "upernet", "segformer"])
def test_camvid_60min_takes_any_head(tmp_path, head):
    """experiment=camvid_60min narrows DeepLabV3+ to 128 channels through recipe.head_kwargs (read by
    conf/head/deeplabv3plus.yaml), so head=<another> on the command line builds that head with its own arguments."""
    overrides = ["experiment=camvid_60min", f"head={head}"]
    cfg = compose_cfg(tmp_path, overrides)
    cfg.backbone.pretrained = False
    net = instantiate(cfg.model).model
    assert [int(c) for c in net.backbone.channels] == [64, 32, 64, 128, 256]  # half-width ResNet-18 for every head
    if head == "deeplabv3plus":
        assert net.head.aspp.project[0].out_channels == 128 and net.head.classifier.in_channels == 128
        assert compose_cfg(tmp_path, ["experiment=camvid_pretrained", "backbone=test_resnet"]).head.aspp_channels == 256
    else:
        assert "aspp_channels" not in cfg.head


@pytest.mark.parametrize("arch", ["fcos_dense", "maskrcnn"])
def test_dsb2018_recipe_takes_either_architecture(tmp_path, arch):
    """experiment=dsb2018 sets only what both architectures take: arch=maskrcnn on the command line builds Mask R-CNN
    with the recipe's 500 detections (no FCOS-only key reaches its constructor); by default FCOS for dense scenes."""
    overrides = ["experiment=dsb2018", "backbone=test_resnet"] + (["arch=maskrcnn"] if arch == "maskrcnn" else [])
    model = instantiate(compose_cfg(tmp_path, overrides).model).model
    expected = autotimm.models.MaskRCNNModel if arch == "maskrcnn" else autotimm.models.FCOSInstanceModel
    assert type(model) is expected
    assert model.max_detections_per_image == 500
    if arch == "fcos_dense":
        assert (model.pre_nms_top_k, model.mask_rois_per_image) == (2000, 64)
        assert model.mask_head.featmap_names == ["p2", "p3", "p4", "p5"]  # recipe.mask_min_stride: 4
    plain = instantiate(compose_cfg(tmp_path, ["model=instance", "backbone=test_resnet"]).model).model
    assert plain.mask_head.featmap_names == ["p3", "p4", "p5"]  # FCOS's default elsewhere
    # the recipe's narrow network: a 96-channel FPN, ResNet-18 at half width (only resnet18 gets the width argument)
    assert not compose_cfg(tmp_path, overrides).backbone.get("extra_kwargs")
    recipe = compose_cfg(tmp_path, ["experiment=dsb2018"])
    assert recipe.arch.fpn_channels == 96 and recipe.backbone.extra_kwargs == {"channels": [32, 64, 128, 256]}
