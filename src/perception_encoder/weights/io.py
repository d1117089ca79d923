"""Temporary alias of the modules ``weights.files``, ``weights.shapes`` and ``weights.strict``."""

from ..atomic import atomic_write  # noqa: F401
from .files import *  # noqa: F401,F403
from .files import save_safetensors, write_checkpoint  # noqa: F401
