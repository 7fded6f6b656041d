"""Feature backbones: any timm model through ``features_only``.

The contract (timm's ``feature_info``): a backbone returns a list of NCHW feature maps and exposes ``channels`` and
``reductions`` (strides) for each. Plain ViTs, whose features all share one stride, are turned into a pyramid
(strides 4, 8, 16, 32 for patch 16) by :class:`SimpleFeaturePyramid` (ViTDet), so every head sees the same contract.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import timm
import torch
from torch import nn

log = logging.getLogger("autotimm")
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")


@dataclass
class FeatureBackboneConfig:
    """A timm backbone used as a multi-scale feature extractor.

    Args:
        model_name: any name ``timm.create_model`` knows (``resnet50``, ``convnext_tiny``,
            ``vit_small_patch16_224``...).
        pretrained: load pretrained weights (needs the weights to be downloadable or cached).
        out_indices: which feature levels to return (timm ``out_indices``); ``None`` keeps all.
        output_stride: 8 or 16 to dilate the last stages (models that support it: ResNets, EfficientNets,
            ConvNeXts, MobileNets, RegNets...); ``None``: the model's native stride (32 for most); ``"auto"`` (the
            default): the stride the head asks for (its ``preferred_output_stride``: 16 for DeepLabV3+, as in the
            paper and smp) where the model can dilate, else native. The task resolves ``"auto"`` when it builds the
            network and keeps the resolved number in its hyper-parameters.
        drop_path_rate: stochastic depth.
        drop_rate: dropout inside the backbone.
        img_size: input size for models with a fixed input size (ViTs, MaxViT, CoAtNet); ViTs also get
            ``dynamic_img_size`` so any size works.
        extra_kwargs: anything else for ``timm.create_model`` (``None``: nothing), e.g. timm ResNet's own width
            arguments ``{"channels": [32, 64, 128, 256]}`` for a half-width ResNet-18.
        weights: a local weights file for the model (``.safetensors``, ``.pth``, ``.pt`` or ``.bin``, as timm or
            the hub write them), loaded through timm's own pretrained path (``pretrained_cfg_overlay=dict(file=...)``),
            so the pretrained config's mean/std still come with it; for compute nodes without network access.
            Implies ``pretrained``.
    """

    model_name: str
    pretrained: bool = True
    out_indices: list[int] | None = None
    output_stride: int | str | None = "auto"
    drop_path_rate: float = 0.0
    drop_rate: float = 0.0
    img_size: int | None = None
    extra_kwargs: dict[str, Any] = field(default_factory=dict)
    weights: str | None = None

    def __post_init__(self):
        if self.extra_kwargs is None:
            self.extra_kwargs = {}
        if not isinstance(self.extra_kwargs, Mapping):
            raise ValueError(f"backbone.extra_kwargs: expected a mapping of timm.create_model arguments or null, "
                             f"got {self.extra_kwargs!r}")
        self.extra_kwargs = dict(self.extra_kwargs)
        os_ = self.output_stride
        if not (os_ is None or os_ == "auto" or (isinstance(os_, int) and not isinstance(os_, bool) and os_ > 0)):
            raise ValueError(f"backbone.output_stride: expected a positive integer (8, 16, 32), 'auto' or null, "
                             f"got {os_!r}")
        if self.weights is not None:
            path = Path(str(self.weights)).expanduser()
            if path.suffix.lower() not in WEIGHT_SUFFIXES:
                raise ValueError(f"backbone.weights: {path} is not a weights file timm reads; expected one of "
                                 f"{list(WEIGHT_SUFFIXES)}")
            if not path.is_file():
                raise FileNotFoundError(f"backbone.weights: {path} does not exist")
            self.weights = str(path)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["out_indices"] = list(self.out_indices) if self.out_indices is not None else None
        d["extra_kwargs"] = dict(self.extra_kwargs)
        return d


def as_backbone_config(backbone: str | dict | FeatureBackboneConfig) -> FeatureBackboneConfig:
    if isinstance(backbone, FeatureBackboneConfig):
        return backbone
    if isinstance(backbone, str):
        return FeatureBackboneConfig(model_name=backbone)
    if isinstance(backbone, dict) or hasattr(backbone, "keys"):
        d = {k: v for k, v in dict(backbone).items() if k != "_target_"}
        return FeatureBackboneConfig(**d)
    raise TypeError(f"backbone must be a timm model name, a dict or a FeatureBackboneConfig, got {type(backbone)!r}")


class SimpleFeaturePyramid(nn.Module):
    """ViTDet's simple pyramid: one stride-s map -> maps at strides s/4, s/2, s, 2s (4, 8, 16, 32 for s=16)."""

    def __init__(self, in_channels: int, stride: int, scales: tuple[float, ...] = (4.0, 2.0, 1.0, 0.5)):
        super().__init__()
        self.stages = nn.ModuleList()
        self.out_channels: list[int] = []
        self.reductions: list[int] = []
        for s in scales:
            layers: list[nn.Module] = []
            ch = in_channels
            if s == 4.0:
                layers += [nn.ConvTranspose2d(ch, ch // 2, 2, 2), nn.GroupNorm(1, ch // 2), nn.GELU(),
                           nn.ConvTranspose2d(ch // 2, ch // 4, 2, 2)]
                ch = ch // 4
            elif s == 2.0:
                layers += [nn.ConvTranspose2d(ch, ch // 2, 2, 2)]
                ch = ch // 2
            elif s == 0.5:
                layers += [nn.MaxPool2d(2, 2)]
            elif s != 1.0:
                raise ValueError(f"unsupported pyramid scale {s}")
            layers += [nn.Conv2d(ch, ch, 1, bias=False), nn.GroupNorm(1, ch), nn.Conv2d(ch, ch, 3, padding=1)]
            self.stages.append(nn.Sequential(*layers))
            self.out_channels.append(ch)
            self.reductions.append(int(round(stride / s)))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [stage(x) for stage in self.stages]


class TimmFeatureBackbone(nn.Module):
    """Wraps ``timm.create_model(..., features_only=True)``; returns NCHW features, strides in ``reductions``.

    ``image_size``: the size the model will be trained at. Models built for a fixed input size (NesT, ResMLP, LeViT,
    PiT, window-based ViTs...) get it as ``img_size`` where timm accepts it, unless the config sets ``img_size``.
    """

    def __init__(self, config: str | dict | FeatureBackboneConfig, image_size: int | None = None,
                 preferred_output_stride: int | None = None):
        super().__init__()
        cfg = as_backbone_config(config)
        kwargs: dict[str, Any] = dict(features_only=True, pretrained=cfg.pretrained or cfg.weights is not None)
        if cfg.weights is not None:  # timm's own pretrained path, from a file: the pretrained config stays
            kwargs["pretrained_cfg_overlay"] = {"file": cfg.weights}
            log.info("backbone %s: weights from %s", cfg.model_name, cfg.weights)
        elif cfg.pretrained:
            ensure_weights_reachable(cfg.model_name)
        if cfg.out_indices is not None:
            kwargs["out_indices"] = tuple(cfg.out_indices)
        if isinstance(cfg.output_stride, int):
            kwargs["output_stride"] = cfg.output_stride
        if cfg.drop_path_rate:
            kwargs["drop_path_rate"] = cfg.drop_path_rate
        if cfg.drop_rate:
            kwargs["drop_rate"] = cfg.drop_rate
        if cfg.img_size is not None:
            kwargs["img_size"] = cfg.img_size
        kwargs.update(cfg.extra_kwargs)
        size = None if "img_size" in kwargs else image_size
        self.body, resolved = None, None
        if cfg.output_stride == "auto" and preferred_output_stride and "output_stride" not in kwargs:
            try:  # a model that cannot dilate rejects the argument before building anything
                self.body = _create(cfg.model_name, {**kwargs, "output_stride": int(preferred_output_stride)}, size)
                resolved = int(preferred_output_stride)
            except (TypeError, AssertionError, NotImplementedError) as e:
                log.info("backbone %s cannot run at output stride %d (%s): native stride kept", cfg.model_name,
                         preferred_output_stride, str(e).splitlines()[0][:120])
        if self.body is None:
            self.body = _create(cfg.model_name, kwargs, size)
        info = self.body.feature_info
        self.body_channels = list(info.channels())
        self.body_reductions = list(info.reduction())
        self.channels_last_output = str(getattr(self.body, "output_fmt", "NCHW")).endswith("NHWC")
        self.pyramid: SimpleFeaturePyramid | None = None
        if len(set(self.body_reductions)) == 1:  # plain ViT: one stride -> build a pyramid from the last map
            self.pyramid = SimpleFeaturePyramid(self.body_channels[-1], self.body_reductions[-1])
            self.channels = list(self.pyramid.out_channels)
            self.reductions = list(self.pyramid.reductions)
        else:
            self.channels = self.body_channels
            self.reductions = self.body_reductions
        # the resolved config ("auto" decided: a number, or None = native) rebuilds the same network
        self.config = replace(cfg, output_stride=resolved if cfg.output_stride == "auto" else cfg.output_stride)

    @property
    def output_stride(self) -> int:
        return self.reductions[-1]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = self.body(x)
        if self.channels_last_output:
            feats = [f.permute(0, 3, 1, 2) for f in feats]
        if self.pyramid is not None:
            feats = self.pyramid(feats[-1])
        return list(feats)


def _create(name: str, kwargs: dict[str, Any], image_size: int | None = None) -> nn.Module:
    """``timm.create_model`` with ``dynamic_img_size=True`` and ``img_size=image_size`` where the model takes them
    (tried in that order; a model that rejects an argument raises ``TypeError`` before building anything big)."""
    if not timm.is_model(name):
        raise ValueError(f"backbone.model_name: unknown timm model {name!r} (see timm.list_models())")
    attempts = [{"dynamic_img_size": True}, {}]
    if image_size:
        attempts = [{**a, "img_size": int(image_size)} for a in attempts] + attempts
    try:
        for extra in attempts[:-1]:
            try:
                return timm.create_model(name, **extra, **kwargs)
            except TypeError:  # the model does not take dynamic_img_size / img_size (CNNs)
                continue
        return timm.create_model(name, **attempts[-1], **kwargs)
    except (OSError, RuntimeError) as e:
        if kwargs.get("pretrained") and "pretrained_cfg_overlay" not in kwargs and (
                "connect" in str(e).lower() or "offline" in str(e).lower() or "resolve" in str(e).lower()
                or isinstance(e, OSError)):
            raise RuntimeError(f"could not load pretrained weights for backbone {name!r}: {e}. "
                               f"{_OFFLINE_HINT.format(name=name)}") from e
        raise


_OFFLINE_HINT = ("Without network access, give the weights as a file (backbone.weights=/path/to/{name}.safetensors, "
                 ".pth or .bin; Python: FeatureBackboneConfig({name!r}, weights=...)), or put them in the Hugging "
                 "Face cache (HF_HOME) on a machine with network access first; or train from scratch with "
                 "backbone.pretrained=false (Python: FeatureBackboneConfig({name!r}, pretrained=False)).")


def _reachable(host: str, port: int = 443, timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def ensure_weights_reachable(name: str) -> None:
    """Fail fast, naming the options, when a model's pretrained weights are neither cached nor downloadable: the
    hub would retry for ~40 s and suggest only its cache. Cached weights (Hugging Face or torch hub cache) and a
    reachable host pass; the download itself stays timm's."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    if cfg is None:
        return  # timm reports models without pretrained weights itself
    if cfg.hf_hub_id:
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:  # pragma: no cover - timm needs huggingface_hub for hub weights
            return
        files = [cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]
        repo = cfg.hf_hub_id.split("@")[0]
        if any(isinstance(try_to_load_from_cache(repo, f), str) for f in files):
            return
        host = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co").hostname or "huggingface.co"
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    elif cfg.url:
        if (Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(cfg.url).path).name).is_file():
            return
        host, offline = urlparse(cfg.url).hostname or "", False
    else:
        return
    if offline or not _reachable(host):
        why = "HF_HUB_OFFLINE is set" if offline else f"{host} cannot be reached"
        raise RuntimeError(f"backbone {name!r}: pretrained weights are not in the local cache and {why}. "
                           f"{_OFFLINE_HINT.format(name=name)}")


# --------------------------------------------------------------------------------------------- preprocessing
PREPROCESS_KEYS = ("mean", "std", "interpolation", "image_size", "pad_multiple", "scale")
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "area", "lanczos")


def resolve_preprocess(backbone: TimmFeatureBackbone, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """What an input image needs before the network, as plain data (it travels in checkpoints):

    ``mean`` / ``std`` (RGB, for images scaled to 0..1) and ``interpolation`` from the backbone's timm pretrained
    config (``timm.data.resolve_model_data_config``: ImageNet statistics for ResNets, 0.5/0.5 for
    ``vit_small_patch16_224``, CLIP's for CLIP/EVA weights); ``image_size`` (the training size: evaluation and
    prediction resize the longest side to it and pad to a square); ``pad_multiple`` (the backbone's deepest
    stride); ``scale`` only where the data resized every image by a fixed factor instead (then prediction does the
    same). Any key given in ``overrides`` with a value other than None wins.
    """
    unknown = sorted(set(overrides or {}) - set(PREPROCESS_KEYS))
    if unknown:
        raise ValueError(f"preprocess: unknown key(s) {unknown}; valid: {list(PREPROCESS_KEYS)}")
    data_cfg = timm.data.resolve_model_data_config(backbone.body)
    out: dict[str, Any] = {"mean": [float(v) for v in data_cfg["mean"]], "std": [float(v) for v in data_cfg["std"]],
                           "interpolation": str(data_cfg.get("interpolation") or "bilinear"), "image_size": None,
                           "pad_multiple": int(backbone.output_stride)}
    out.update({k: v for k, v in (overrides or {}).items() if v is not None})
    for key in ("mean", "std"):
        out[key] = [float(v) for v in out[key]]
        if len(out[key]) != 3:
            raise ValueError(f"preprocess.{key}: expected 3 values (R, G, B), got {out[key]}")
    if min(out["std"]) <= 0:
        raise ValueError(f"preprocess.std: every value must be > 0, got {out['std']}")
    if out["interpolation"] not in INTERPOLATIONS:
        raise ValueError(f"preprocess.interpolation: unknown {out['interpolation']!r}; valid: {list(INTERPOLATIONS)}")
    if out["image_size"] is not None:
        out["image_size"] = int(out["image_size"])
    out["pad_multiple"] = int(out["pad_multiple"])
    if out.get("scale") is not None:  # a fixed input scale instead of image_size's longest side (instance data)
        out["scale"] = float(out["scale"])
    return out
