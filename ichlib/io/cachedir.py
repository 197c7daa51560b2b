"""Where ichlib keeps its caches (resized volumes, RSNA header tables) unless told otherwise."""

from __future__ import annotations

import os
from pathlib import Path

#: Environment variable naming the cache folder.
CACHE_ENV = "ICHLIB_CACHE"


def default_cache_dir() -> Path:
    """``$ICHLIB_CACHE`` if set, else ``~/.cache/ichlib``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else Path.home() / ".cache" / "ichlib"
