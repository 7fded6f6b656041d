"""The networks, as plain ``nn.Module``s composed by injection (no Lightning): what tasks train, ``predict.py``
runs and ``export.py`` traces. Instance architectures follow ``InstanceModelBase`` (``base.py``)."""

from .base import InstanceModelBase
from .fcos_instance import FCOSInstanceModel
from .maskrcnn import MaskRCNNModel
from .semantic import SemanticModel

__all__ = ["FCOSInstanceModel", "InstanceModelBase", "MaskRCNNModel", "SemanticModel"]
