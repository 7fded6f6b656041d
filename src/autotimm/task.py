"""Alias of ``autotimm.tasks`` (singular import style)."""

from .tasks import *  # noqa: F403
from .tasks import __all__  # noqa: F401
