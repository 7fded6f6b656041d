"""Metrics declared as data (``MetricConfig``) and built per stage (``MetricManager``)."""

from __future__ import annotations

import contextlib
import importlib
import inspect
import io
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from torch import nn

from ..utils import plain

STAGES = ("train", "val", "test")


@dataclass
class MetricConfig:
    """One metric, logged as ``<stage>/<name>``.

    Args:
        name: short name in the log (``miou`` -> ``val/miou``).
        metric_class: a torchmetrics class name (``JaccardIndex``, ``Accuracy``, ``MeanAveragePrecision``...),
            ``MatchingAccuracy`` (DSB2018's score, ``autotimm.metrics``) or a dotted path to any
            ``torchmetrics.Metric`` subclass.
        params: constructor arguments. ``num_classes`` and ``ignore_index`` are filled in from the model when the
            class accepts them and they are not given.
        backend: only ``"torchmetrics"``.
        stages: where to compute it: any of ``train``, ``val``, ``test``.
        prog_bar: show in the progress bar.
        log_on_step / log_on_epoch: Lightning logging granularity.
    """

    name: str
    metric_class: str
    params: dict[str, Any] = field(default_factory=dict)
    backend: str = "torchmetrics"
    stages: list[str] = field(default_factory=lambda: ["val", "test"])
    prog_bar: bool = False
    log_on_step: bool = False
    log_on_epoch: bool = True

    def __post_init__(self):
        if self.backend != "torchmetrics":
            raise ValueError(f"MetricConfig({self.name!r}).backend: only 'torchmetrics' is supported, "
                             f"got {self.backend!r}")
        self.stages = list(self.stages)
        unknown = [s for s in self.stages if s not in STAGES]
        if unknown:
            raise ValueError(f"MetricConfig({self.name!r}).stages: unknown {unknown}; expected any of {list(STAGES)}")
        self.params = dict(self.params or {})

    def to_dict(self) -> dict[str, Any]:
        return plain(asdict(self))


def as_metric_config(m: MetricConfig | dict) -> MetricConfig:
    if isinstance(m, MetricConfig):
        return m
    d = {k: v for k, v in dict(m).items() if k != "_target_"}
    d["params"] = dict(d.get("params") or {})
    return MetricConfig(**d)


def resolve_metric_class(name: str) -> type:
    if "." in name:
        module, _, cls = name.rpartition(".")
        return getattr(importlib.import_module(module), cls)
    import torchmetrics

    from . import matching

    if hasattr(matching, name):  # the project's own (MatchingAccuracy)
        return getattr(matching, name)
    for mod in (torchmetrics, "torchmetrics.detection", "torchmetrics.segmentation", "torchmetrics.classification"):
        mod = importlib.import_module(mod) if isinstance(mod, str) else mod
        if hasattr(mod, name):
            return getattr(mod, name)
    raise ValueError(f"MetricConfig.metric_class: no torchmetrics metric named {name!r}")


def _accepted(cls: type) -> set[str]:
    names: set[str] = set()
    for fn in (getattr(cls, "__new__", None), cls.__init__):
        try:
            names |= set(inspect.signature(fn).parameters)
        except (TypeError, ValueError):
            pass
    return names


def coco_thresholds() -> dict[str, list[float]]:
    """pycocotools' own IoU and recall thresholds (float64 ``np.linspace``). torchmetrics builds them in float32
    (0.55 -> 0.550000011920929), so an IoU exactly on a threshold, common with masks on a pixel grid, is matched
    differently from COCOeval; passing these makes ``MeanAveragePrecision`` agree with COCOeval."""
    return {"iou_thresholds": np.linspace(0.5, 0.95, 10).tolist(),
            "rec_thresholds": np.linspace(0.0, 1.0, 101).tolist()}


def _last_max_dets_summary(base: type) -> type:
    """A subclass of a COCOeval class whose summary scores ``AP@[.5:.95]`` (``stats[0]``) at the last of
    ``params.maxDets``, as every other AP line of ``summarize()`` already does. pycocotools hard-codes 100 for that
    one line, so with ``maxDets=[1, 10, 300]`` it finds no such column and returns -1 (cocoapi #584, torchmetrics
    #2560). With the default ``[1, 10, 100]`` the result is identical."""

    def summarize(self):
        base.summarize(self)
        if self.params.iouType in ("bbox", "segm"):
            p = self.params
            prec = self.eval["precision"][:, :, :, p.areaRngLbl.index("all"), len(p.maxDets) - 1]
            valid = prec[prec > -1]
            self.stats[0] = float(np.mean(valid)) if valid.size else -1.0

    return type(f"LastMaxDets{base.__name__}", (base,), {"summarize": summarize})


class _CocoEvalBackend:
    """torchmetrics' ``CocoBackend`` made to score as COCOeval does: :func:`_last_max_dets_summary`'s summary, and
    every image in the datasets it builds (``_get_coco_datasets``); everything else delegated."""

    def __init__(self, inner):
        self._inner = inner
        self._cls = None

    @property
    def cocoeval(self):
        if self._cls is None:
            self._cls = _last_max_dets_summary(self._inner.cocoeval)
        return self._cls

    def _get_coco_datasets(self, groundtruth_labels, *args, **kwargs):
        """Every updated image in both COCO datasets, as COCOeval expects. torchmetrics' segm path leaves out an image
        without masks, so (1) detections on an image without ground truth never count as false positives (one such
        detection above a true one: AP 1.0 where COCOeval says 0.5) and (2) a model that detects nothing on any
        image reads -1 ("no data") instead of COCOeval's 0 for the ground truth it missed."""
        preds, target = self._inner._get_coco_datasets(groundtruth_labels, *args, **kwargs)
        for coco in (preds, target):
            have = {img["id"] for img in coco.dataset["images"]}
            missing = [{"id": i} for i in range(len(groundtruth_labels)) if i not in have]
            if missing:
                coco.dataset["images"] = sorted(coco.dataset["images"] + missing, key=lambda img: img["id"])
                with contextlib.redirect_stdout(io.StringIO()):
                    coco.createIndex()
        return preds, target

    def __getattr__(self, name):
        if name.startswith("__") or name in ("_inner", "_cls"):  # copy/pickle probe a bare instance: no recursion
            raise AttributeError(name)
        return getattr(self._inner, name)

    def __getstate__(self):
        return {"_inner": self._inner, "_cls": None}  # the generated class is rebuilt on demand, not pickled

    def __setstate__(self, state):
        self.__dict__.update(state)


def build_metric(cfg: MetricConfig, defaults: dict[str, Any]):
    cls = resolve_metric_class(cfg.metric_class)
    params = dict(cfg.params)
    if cls.__name__ == "MeanAveragePrecision":
        for key, value in coco_thresholds().items():
            params.setdefault(key, value)
    accepted = _accepted(cls)
    for key, value in defaults.items():
        if key in accepted and key not in params and value is not None:
            params[key] = value
    try:
        metric = cls(**params)
    except (TypeError, ValueError) as e:
        raise ValueError(f"MetricConfig({cfg.name!r}): cannot build {cfg.metric_class}({params}): {e}") from e
    if cls.__name__ == "MeanAveragePrecision" and hasattr(metric, "_coco_backend"):
        metric._coco_backend = _CocoEvalBackend(metric._coco_backend)  # mAP at the last maxDets, every image
    return metric


class MetricManager(nn.Module):
    """Holds one torchmetrics instance per (stage, metric); a ``ModuleDict`` so they follow the model's device."""

    def __init__(self, configs: list[MetricConfig] | None, defaults: dict[str, Any]):
        super().__init__()
        self.configs = [as_metric_config(c) for c in (configs or [])]
        names = [c.name for c in self.configs]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"metrics: duplicate metric names {sorted(dup)}")
        self.defaults = dict(defaults)
        self.metrics = nn.ModuleDict()
        for cfg in self.configs:
            for stage in cfg.stages:
                self.metrics[f"{stage}__{cfg.name}"] = build_metric(cfg, defaults)

    def set_default(self, key: str, value: Any) -> None:
        """Change a task-supplied default on the metrics already built: each metric that has ``key`` as an attribute
        and whose config did not set it in ``params`` takes ``value`` (e.g. ``MeanAveragePrecision``'s
        ``max_detection_thresholds`` after the model's ``max_detections_per_image`` changed). A value the user put in
        a config's ``params`` is left as given."""
        self.defaults[key] = value
        for cfg in self.configs:
            if key in cfg.params:
                continue
            for stage in cfg.stages:
                metric = self.metrics[f"{stage}__{cfg.name}"]
                if hasattr(metric, key):
                    setattr(metric, key, value)

    def for_stage(self, stage: str):
        for cfg in self.configs:
            key = f"{stage}__{cfg.name}"
            if key in self.metrics:
                yield cfg, self.metrics[key]
