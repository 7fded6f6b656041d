"""Lightning tasks."""

from .semantic import SemanticSegmentor

__all__ = ["SemanticSegmentor"]
