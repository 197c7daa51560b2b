"""Re-exporting a package's public names without importing them until they are used.

``import ichlib.preprocess.dataset`` then runs ``ichlib/preprocess/__init__.py`` without
pulling in every sibling (scikit-learn for the splits, say), which keeps ``ichlib
predict`` and ``ichlib --help`` quick.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module


def lazy_exports(package: str, names: dict[str, str]) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for a package whose ``names`` map to submodules.

    Args:
        package: The package's ``__name__``.
        names: Public name -> module that defines it (absolute, or relative to ``package``
            when it starts with ``.``).
    """
    def resolve(module: str) -> str:
        return package + module if module.startswith(".") else module

    def __getattr__(name: str) -> object:
        if name in names:
            return getattr(import_module(resolve(names[name])), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(names)

    return __getattr__, __dir__
