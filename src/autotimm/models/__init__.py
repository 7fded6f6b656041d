"""The networks, as plain ``nn.Module``s composed by injection (no Lightning): what tasks train, ``predict.py``
runs and ``export.py`` traces."""

from .instance import InstanceModel
from .semantic import SemanticModel

__all__ = ["InstanceModel", "SemanticModel"]
