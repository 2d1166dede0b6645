"""Shared result types and protocols used across pillars.

Results are frozen dataclasses that inherit :class:`Result`, which turns them (recursively) into
JSON-ready dicts. Analyses return them; reports render them; nothing here does I/O.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Protocol, runtime_checkable

import numpy as np


def to_jsonable(obj: Any) -> Any:
    """Convert dataclasses, numpy arrays/scalars, tuples and dicts into JSON-serialisable values.

    Non-finite floats become ``None`` so the output is strict JSON.
    """
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)
                if not f.metadata.get("exclude_json", False)}
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, (np.bool_, bool)):
        return bool(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating, float)):
        f = float(obj)
        return f if math.isfinite(f) else None
    if obj is None or isinstance(obj, (int, str)):
        return obj
    if hasattr(obj, "to_dict"):
        return to_jsonable(obj.to_dict())
    return repr(obj)


class Result:
    """Mixin for result dataclasses: ``to_dict()`` and ``to_json()``."""

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict of this result (arrays become lists)."""
        return to_jsonable(self)

    def to_json(self, **kwargs: Any) -> str:
        """Return this result as a JSON string."""
        return json.dumps(self.to_dict(), **kwargs)


@dataclasses.dataclass(frozen=True)
class Interval(Result):
    """A two-sided interval estimate ``[low, high]`` at confidence ``level``."""

    low: float
    high: float
    level: float = 0.95

    def __iter__(self):  # allows ``lo, hi = interval``
        yield self.low
        yield self.high

    def __str__(self) -> str:
        return f"[{self.low:.4g}, {self.high:.4g}]"


@runtime_checkable
class Classifier(Protocol):
    """Anything that maps a batch of inputs to logits or probabilities ``(n, k)``."""

    def __call__(self, x: Any) -> Any:  # pragma: no cover - protocol
        ...
