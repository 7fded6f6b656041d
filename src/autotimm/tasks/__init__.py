"""Lightning tasks."""

from .instance import InstanceSegmentor
from .semantic import SemanticSegmentor

__all__ = ["InstanceSegmentor", "SemanticSegmentor"]
