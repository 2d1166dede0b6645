"""Task kinds, plans, key-derived seeds, failures and the key-ordered fold of the sweep engine.

A sweep is a :class:`Plan`: an ordered tuple of :class:`TaskSpec` (kind, key, params) whose order is the
report order. A :class:`TaskKind` bundles four pure functions in the manner of Ray's ``AggregateFn`` and
torchmetrics' metric states:

- ``init() -> partial``: the identity (an empty partial, n = 0);
- ``run(context, key, params) -> partial``: one task's work on the shared ``context`` (the model, the data);
- ``merge(a, b) -> partial``: associative with ``init()`` as identity; may reuse ``a``, never mutates ``b``;
- ``finalize(partial) -> result``: pure, no I/O.

``mergeable=False`` marks kinds whose state needs all of the data (quantiles, exact AUROC): the planner never
splits them below one task and the reducer only collects them by key.

Executors return one partial per task in any order; :func:`fold_partials` sorts them by plan position and
left-folds from ``init()``, so float sums come out bit-identical for any worker count and backend.
Randomness comes from :func:`task_rng` (``SeedSequence(seed, spawn_key=(stage, *key))``), never from
execution order.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import traceback
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Any

import numpy as np

from failsight._validate import FailsightInputError

__all__ = [
    "Plan",
    "SweepError",
    "TaskFailure",
    "TaskKind",
    "TaskSpec",
    "fold_partials",
    "get_task_kind",
    "key_ints",
    "list_task_kinds",
    "register_task_kind",
    "stable_key_hash",
    "task_rng",
    "task_seed",
]

TaskKey = tuple[Hashable, ...]


# --------------------------------------------------------------------------------------------------
# keys and seeds
# --------------------------------------------------------------------------------------------------
def stable_key_hash(part: Any) -> int:
    """A 32-bit integer for one key part, the same in every process and on every machine.

    Non-negative integers below 2**32 map to themselves; anything else (strings, floats, negative or large
    ints, tuples) goes through blake2b of its ``repr`` tagged with its type. Never Python's ``hash()``,
    which is salted per process.
    """
    if isinstance(part, (bool, np.bool_)):
        part = int(part)
    if isinstance(part, (int, np.integer)) and 0 <= int(part) < 2**32:
        return int(part)
    text = f"{type(part).__name__}:{part!r}" if not isinstance(part, str) else f"str:{part}"
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=4).digest(), "little")


def key_ints(key: Iterable[Any]) -> tuple[int, ...]:
    """The key as 32-bit integers (:func:`stable_key_hash` of each part)."""
    return tuple(stable_key_hash(p) for p in key)


def task_rng(seed: int, stage: str, key: Iterable[Any]) -> np.random.Generator:
    """The generator of task ``key`` in ``stage``: ``SeedSequence(seed, spawn_key=(stage, *key))``.

    It depends only on the seed, the stage name and the key, so a task draws the same numbers whether it
    runs first, last, alone, on another worker or next to added tasks.
    """
    return np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(stable_key_hash(stage),
                                                                              *key_ints(key))))


def task_seed(seed: int, stage: str, key: Iterable[Any]) -> int:
    """A 31-bit integer seed for APIs that take an int (torch generators, sklearn), derived like :func:`task_rng`."""
    ss = np.random.SeedSequence(int(seed), spawn_key=(stable_key_hash(stage), *key_ints(key)))
    return int(ss.generate_state(1, dtype=np.uint32)[0] >> 1)


# --------------------------------------------------------------------------------------------------
# task kinds
# --------------------------------------------------------------------------------------------------
def _collect_merge(a: Any, b: Any) -> Any:
    raise FailsightInputError("this task kind is not mergeable; its partials are collected by key.")


@dataclasses.dataclass(frozen=True)
class TaskKind:
    """One kind of task: ``name``, the four functions and whether partials merge (see the module docstring).

    ``run`` must be a module-level function (it travels to worker processes by reference).
    ``requires``: names of artifacts (earlier stages' outputs) the tasks read, for documentation and checks.
    """

    name: str
    run: Callable[[Any, TaskKey, dict[str, Any]], Any]
    init: Callable[[], Any] = dataclasses.field(default=lambda: None)
    merge: Callable[[Any, Any], Any] = _collect_merge
    finalize: Callable[[Any], Any] = dataclasses.field(default=lambda s: s)
    mergeable: bool = True
    requires: tuple[str, ...] = ()


_REGISTRY: dict[str, TaskKind] = {}


def register_task_kind(kind: TaskKind) -> TaskKind:
    """Add ``kind`` to the registry (replacing one of the same name); returns it."""
    if not isinstance(kind, TaskKind):
        raise FailsightInputError(f"register_task_kind takes a TaskKind, got {type(kind).__name__}.")
    _REGISTRY[kind.name] = kind
    return kind


def get_task_kind(name: str) -> TaskKind:
    """The registered kind ``name``."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise FailsightInputError(f"unknown task kind {name!r}; registered: {', '.join(sorted(_REGISTRY))}.") \
            from None


def list_task_kinds() -> list[str]:
    """Names of the registered task kinds."""
    return sorted(_REGISTRY)


def _noop(context: Any, key: TaskKey, params: dict[str, Any]) -> TaskKey:
    return key


#: A task that returns its key: measures the executor's own per-task cost (and checks a cluster is reachable).
NOOP = TaskKind("engine.noop", run=_noop, mergeable=False)
register_task_kind(NOOP)


# --------------------------------------------------------------------------------------------------
# plans
# --------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """One task: its kind's name, its ``key`` (a tuple; the seed and the fold order follow it) and small params."""

    kind: str
    key: TaskKey
    params: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Plan:
    """An ordered tuple of task specs; the order is the report order and the fold order."""

    specs: tuple[TaskSpec, ...]

    @classmethod
    def build(cls, kind: str | TaskKind, keys: Sequence[TaskKey], params: dict[str, Any] | None = None,
              per_key: Callable[[TaskKey], dict[str, Any]] | None = None) -> Plan:
        """A plan of one ``kind`` over ``keys`` (duplicates refused); params shared or ``per_key(key)``."""
        name = kind.name if isinstance(kind, TaskKind) else str(kind)
        keys = [tuple(k) if isinstance(k, (tuple, list)) else (k,) for k in keys]
        if len(set(keys)) != len(keys):
            raise FailsightInputError(f"plan keys must be unique; {name} lists a key twice.")
        specs = tuple(TaskSpec(name, k, {**(params or {}), **(per_key(k) if per_key else {})}) for k in keys)
        return cls(specs)

    def __len__(self) -> int:
        return len(self.specs)

    def __iter__(self):
        return iter(self.specs)

    def fingerprint(self) -> str:
        """A short hash of kinds, keys and params (what makes two runs of the plan comparable)."""
        text = json.dumps([[s.kind, [repr(p) for p in s.key], sorted((k, repr(v)) for k, v in s.params.items())]
                           for s in self.specs])
        return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


# --------------------------------------------------------------------------------------------------
# failures
# --------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class TaskFailure:
    """A task that raised: its ``kind``, ``key``, the exception type name, message and traceback text."""

    kind: str
    key: TaskKey
    error: str
    message: str
    traceback: str = ""

    @classmethod
    def from_exception(cls, kind: str, key: TaskKey, exc: BaseException) -> TaskFailure:
        return cls(kind=kind, key=tuple(key), error=type(exc).__name__, message=str(exc),
                   traceback="".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "key": [str(k) for k in self.key], "error": self.error, "message": self.message}

    def describe(self) -> str:
        return f"{self.kind} task {self.key} failed with {self.error}: {self.message}"


class SweepError(RuntimeError):
    """Raised when tasks of a sweep failed; ``failures`` holds one :class:`TaskFailure` per failed task."""

    def __init__(self, failures: Sequence[TaskFailure]) -> None:
        self.failures = tuple(failures)
        first = self.failures[0]
        more = f" (and {len(self.failures) - 1} more)" if len(self.failures) > 1 else ""
        super().__init__(first.describe() + more)


def raise_failures(failures: Sequence[TaskFailure]) -> None:
    """Re-raise task failures on the driver: an input error stays a :class:`FailsightInputError` (its message
    names the fix), anything else becomes a :class:`SweepError` carrying every failure."""
    if not failures:
        return
    inputs = [f for f in failures if f.error == "FailsightInputError"]
    if inputs:
        raise FailsightInputError(inputs[0].message)
    raise SweepError(failures)


# --------------------------------------------------------------------------------------------------
# folding
# --------------------------------------------------------------------------------------------------
def fold_partials(kind: TaskKind, partials: Iterable[tuple[int, Any]]) -> Any:
    """Left-fold ``(plan_position, partial)`` pairs from ``kind.init()`` in plan order (never completion order)."""
    if not kind.mergeable:
        raise FailsightInputError(f"task kind {kind.name!r} is not mergeable; collect its partials by key.")
    acc = kind.init()
    for _, part in sorted(partials, key=lambda t: t[0]):
        acc = kind.merge(acc, part)
    return acc
