"""Vision-token pruning: pruners, applying a keep decision through the image-token layer, evaluation.

`visionloom.pruning.wrap(model, processor, pruner=..., keep_ratio=...)` prunes inside an existing
transformers script (`dropin.py`); it is imported on first use, so importing a submodule stays light.
"""

from typing import Any

__all__ = ["wrap"]


def __getattr__(name: str) -> Any:
    if name == "wrap":
        from visionloom.pruning.dropin import wrap

        return wrap
    raise AttributeError(f"module 'visionloom.pruning' has no attribute {name!r}")
