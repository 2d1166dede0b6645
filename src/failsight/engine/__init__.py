"""The sweep engine: independent tasks, small mergeable partials, local workers or a Ray cluster.

Anything that loops over conditions (shifts × severities, detection trials, a study's variants × seeds) is a
:class:`Plan` of :class:`TaskSpec`; :func:`run_sweep` runs it on an executor and returns one partial per task
in plan order; :func:`fold_partials` merges partials of a mergeable :class:`TaskKind` in key order. Results
are identical for any worker count and backend with the same seed: seeds come from task keys
(:func:`task_rng`), and floats are folded in plan order, never completion order. See ``ENGINE.md``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from failsight.engine.core import (
    Plan,
    SweepError,
    TaskFailure,
    TaskKind,
    TaskSpec,
    fold_partials,
    get_task_kind,
    key_ints,
    list_task_kinds,
    register_task_kind,
    stable_key_hash,
    task_rng,
    task_seed,
)
from failsight.engine.executors import (
    Executor,
    LocalExecutor,
    RayExecutor,
    SerialExecutor,
    available_cores,
    make_executor,
    threads_per_worker,
)

__all__ = [
    "Executor",
    "LocalExecutor",
    "Plan",
    "RayExecutor",
    "SerialExecutor",
    "SweepError",
    "TaskFailure",
    "TaskKind",
    "TaskSpec",
    "available_cores",
    "fold_partials",
    "get_task_kind",
    "key_ints",
    "list_task_kinds",
    "make_executor",
    "register_task_kind",
    "run_sweep",
    "stable_key_hash",
    "task_rng",
    "task_seed",
    "threads_per_worker",
]


def run_sweep(plan: Plan, context: Any, *, executor: Executor | None = None, workers: int | None = None,
              backend: str = "local", ray_address: str | None = None, progress: bool = True,
              label: str = "sweep", describe: Callable[[TaskSpec], str] | None = None,
              work: float | None = None, on_result: Callable[[TaskSpec, Any], Any] | None = None) -> list[Any]:
    """Run every task of ``plan`` on ``context``; returns the partials in plan order.

    Pass an ``executor`` to reuse workers across stages (the caller closes it), or ``workers`` /
    ``backend`` / ``ray_address`` to make one for this call (see :func:`make_executor`; ``work`` is the
    sweep's size in input values × tasks, so that small sweeps skip starting workers). Progress: one
    event per finished task (and ``on_result(spec, partial)`` as it arrives), shown by :mod:`failsight.progress` (a bar in a terminal, log lines otherwise).
    A failed task raises after the others finished: :class:`~failsight._validate.FailsightInputError` for
    input problems, :class:`SweepError` (with every :class:`TaskFailure`) otherwise.
    """
    from failsight.progress import progress_bar

    own = executor is None
    ex = make_executor(workers, backend, ray_address=ray_address, n_tasks=len(plan),
                                  work=work) if own else executor
    try:
        with progress_bar(label, progress) as bar:
            task = bar.add_task(label, total=len(plan), info="")

            def on_done(spec: TaskSpec) -> None:
                bar.update(task, advance=1, info=describe(spec) if describe else " ".join(map(str, spec.key)))

            return ex.run(plan, context, progress=on_done, on_result=on_result)
    finally:
        if own:
            ex.close()
