"""Task kinds for the engine tests (module-level functions, so they travel to worker processes and Ray)."""

from __future__ import annotations

from failsight._validate import FailsightInputError
from failsight.engine import TaskKind, register_task_kind, stable_key_hash, task_rng


def draw(ctx, key, params):
    return task_rng(ctx["seed"], "test", key).random(4)


def fail(ctx, key, params):
    if key[0] == "bad":
        raise ValueError("boom")
    if key[0] == "input":
        raise FailsightInputError("fix the input")
    return key[0]


def hash_parts(ctx, key, params):
    return [stable_key_hash(p) for p in key]


def register() -> None:
    register_task_kind(TaskKind("test.draw", run=draw, mergeable=False))
    register_task_kind(TaskKind("test.fail", run=fail, mergeable=False))
    register_task_kind(TaskKind("test.hash", run=hash_parts, mergeable=False))
