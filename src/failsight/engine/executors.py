"""Executors: run a plan's tasks in this process, on local worker processes (or threads), or on Ray.

Every executor has ``run(plan, context, progress=None) -> list`` (one partial per spec, in plan order) and
``close()``. The ``context`` holds the large shared inputs (the model, the data): it travels to each worker
once per sweep stage, never once per task, and each task returns only its partial.

- :class:`SerialExecutor`: in the calling process (1 worker; no start-up cost).
- :class:`LocalExecutor`: ``workers`` processes started with ``forkserver`` (Linux; the server pre-imports
  torch and failsight so a worker starts in well under a second) or ``spawn`` — never ``fork``: a forked
  child hangs once the parent has used the binning thread pool. The context is pickled once per stage into
  a temporary folder, numpy arrays above 1 MiB as ``.npy`` files the workers memory-map (one copy in the page
  cache, shared by all workers). Contexts that do not pickle (a lambda as the model) run on threads instead.
- :class:`RayExecutor`: ``ray.put(context)`` once per stage, one remote call per task (``num_cpus=1``).

Each task runs on :func:`threads_per_worker` torch/BLAS threads (1 unless ``FAILSIGHT_NUM_THREADS`` says
otherwise) whatever the worker count, so that floats come out identical for any worker count and backend.
"""

from __future__ import annotations

import contextlib
import io
import multiprocessing as mp
import os
import pickle
import shutil
import tempfile
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, ThreadPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import numpy as np

from failsight._validate import FailsightInputError, check_int
from failsight.engine.core import Plan, TaskFailure, TaskSpec, get_task_kind, raise_failures

__all__ = ["Executor", "LocalExecutor", "RayExecutor", "SerialExecutor", "available_cores", "make_executor",
           "threads_per_worker"]

#: numpy arrays at least this large travel to local workers as memory-mapped ``.npy`` files.
SPILL_BYTES = 1 << 20
#: Modules the forkserver imports once, so that forked workers start without re-importing them.
#: ``failsight.engine._warm`` also loads the numba corruption kernels there (once per driver process, not per worker).
_PRELOAD = ["torch", "numpy", "failsight.engine.executors", "failsight.robustness.evaluate",
            "failsight.robustness.detect", "failsight.reliability.metrics", "failsight.engine._warm"]


def available_cores() -> int:
    """CPUs this process may use (affinity-aware)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def threads_per_worker(workers: int) -> int:
    """Torch/BLAS threads of every task: ``FAILSIGHT_NUM_THREADS`` if set, else 1.

    The same for any worker count, on purpose: torch's kernels split reductions by thread count, so logits
    computed on 2 threads can differ from 1-thread logits in the last bits, and "identical results for any
    worker count and backend" needs every task to run on the same number of threads. Parallelism comes from
    the workers (default one per core, so workers × threads <= cores); on the small CNNs measured here one
    thread per process is also the fastest (MNIST CNN: 264 images/s on 1 thread, 198 on 2, loaded machine).
    Set ``FAILSIGHT_NUM_THREADS`` (the same value everywhere) for large models with few workers."""
    env = os.environ.get("FAILSIGHT_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    return 1


def set_worker_threads(n: int) -> None:
    """Limit this process to ``n`` torch, BLAS/OpenMP and binning threads (for the rest of its life)."""
    os.environ["FAILSIGHT_NUM_THREADS"] = str(n)
    os.environ["OMP_NUM_THREADS"] = str(n)
    try:
        import torch

        torch.set_num_threads(n)
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(n)
    except ImportError:  # pragma: no cover
        pass
    import sys

    binning = sys.modules.get("failsight.reliability._binning")
    if binning is not None:
        binning.MAX_THREADS = n


def _call(run: Callable[..., Any], context: Any, spec: TaskSpec) -> tuple[bool, Any]:
    try:
        return True, run(context, spec.key, spec.params)
    except Exception as exc:
        return False, TaskFailure.from_exception(spec.kind, spec.key, exc)


class Executor:
    """Base class: ``run(plan, context, progress)`` returns the partials in plan order."""

    workers: int = 1
    backend: str = "serial"

    def run(self, plan: Plan, context: Any, progress: Any = None, on_result: Any = None) -> list[Any]:
        """Partials in plan order; ``progress(spec)`` and ``on_result(spec, partial)`` are called on the driver
        as each task finishes (completion order)."""
        results: dict[int, Any] = {}
        failures: list[TaskFailure] = []
        for i, ok, value in self._iter(plan, context):
            if ok:
                results[i] = value
                if on_result is not None:
                    on_result(plan.specs[i], value)
            else:
                failures.append(value)
            if progress is not None:
                progress(plan.specs[i])
        raise_failures(failures)
        return [results[i] for i in range(len(plan))]

    def _iter(self, plan: Plan, context: Any):
        raise NotImplementedError

    def close(self) -> None:
        """Release workers (idempotent)."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class SerialExecutor(Executor):
    """Runs the tasks one after another in the calling process."""

    def __init__(self, threads: int | None = None) -> None:
        self.workers = 1
        self.threads = threads

    def _iter(self, plan: Plan, context: Any):
        from failsight._threads import limit_threads

        with limit_threads(self.threads):
            for i, spec in enumerate(plan.specs):
                ok, value = _call(get_task_kind(spec.kind).run, context, spec)
                yield i, ok, value


# --------------------------------------------------------------------------------------------------
# local processes
# --------------------------------------------------------------------------------------------------
class _SpillPickler(pickle.Pickler):
    def __init__(self, file: Any, folder: str) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.folder = folder
        self.count = 0

    def persistent_id(self, obj: Any) -> Any:
        if type(obj) is np.ndarray and obj.nbytes >= SPILL_BYTES and obj.dtype != object:
            path = os.path.join(self.folder, f"a{self.count}.npy")
            self.count += 1
            np.save(path, obj, allow_pickle=False)
            return ("npy", path)
        return None


class _SpillUnpickler(pickle.Unpickler):
    def persistent_load(self, pid: Any) -> Any:
        tag, path = pid
        if tag != "npy":  # pragma: no cover - only this tag is written
            raise pickle.UnpicklingError(f"unknown persistent id {tag!r}")
        return np.load(path, mmap_mode="r")


def dump_context(context: Any, folder: str) -> str:
    """Pickle ``context`` into ``folder`` (large arrays as ``.npy``); returns the pickle's path."""
    path = os.path.join(folder, "context.pkl")
    buf = io.BytesIO()
    _SpillPickler(buf, folder).dump(context)
    with open(path, "wb") as fh:
        fh.write(buf.getvalue())
    return path


def load_context(path: str) -> Any:
    """Inverse of :func:`dump_context` (arrays memory-mapped read-only)."""
    with open(path, "rb") as fh:
        return _SpillUnpickler(fh).load()


_WORKER_CONTEXT: dict[str, Any] = {}


def _worker_init(threads: int) -> None:
    set_worker_threads(threads)


def _worker_task(token: str, path: str, run: Callable[..., Any], spec: TaskSpec) -> tuple[bool, Any]:
    if _WORKER_CONTEXT.get("token") != token:
        _WORKER_CONTEXT.clear()
        try:
            _WORKER_CONTEXT["context"] = load_context(path)
        except Exception as exc:  # e.g. a model class the worker cannot import
            return False, TaskFailure.from_exception(spec.kind, spec.key, RuntimeError(
                f"a worker process could not load the model and data ({type(exc).__name__}: {exc}); define the "
                "model class in an importable module (or under `if __name__ == '__main__':` in a script), or "
                "pass workers=1"))
        _WORKER_CONTEXT["token"] = token
    return _call(run, _WORKER_CONTEXT["context"], spec)


def _start_method() -> str:
    methods = mp.get_all_start_methods()
    return "forkserver" if "forkserver" in methods else "spawn"


class LocalExecutor(Executor):
    """``workers`` local worker processes (default: every usable core); see the module docstring.

    ``mode``: ``"process"``, ``"thread"`` or ``"auto"`` (processes; threads for contexts that do not pickle).
    Workers start on the first ``run`` and are reused by later stages until :meth:`close`.
    """

    backend = "local"

    def __init__(self, workers: int | None = None, *, mode: str = "auto", threads: int | None = None) -> None:
        self.workers = available_cores() if workers is None else check_int(workers, "workers")
        if mode not in ("auto", "process", "thread"):
            raise FailsightInputError(f"mode must be 'auto', 'process' or 'thread', got {mode!r}.")
        self.mode = mode
        self.threads = threads_per_worker(self.workers) if threads is None else check_int(threads, "threads")
        self._pool: ProcessPoolExecutor | None = None
        self._broken = False  # worker processes died once: later stages run in this process
        self._tmp: str | None = None
        self.last_mode: str | None = None

    def _process_pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            method = _start_method()
            ctx = mp.get_context(method)
            if method == "forkserver":
                import importlib.util

                ctx.set_forkserver_preload([m for m in _PRELOAD if importlib.util.find_spec(m.split(".")[0])])
            self._pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=ctx, initializer=_worker_init,
                                             initargs=(self.threads,))
        return self._pool

    def _iter(self, plan: Plan, context: Any):
        mode = self.mode
        folder = None
        if self._broken and mode != "thread":
            yield from self._serial(plan, context, set())
            return
        if mode != "thread":
            folder = tempfile.mkdtemp(prefix="failsight-ctx-")
            try:
                path = dump_context(context, folder)
            except (pickle.PicklingError, AttributeError, TypeError) as exc:
                shutil.rmtree(folder, ignore_errors=True)
                folder = None
                if mode == "process":
                    raise FailsightInputError(
                        f"the model or data cannot be sent to worker processes ({exc}); use mode='thread', "
                        "workers=1, or define the model at module level so that it pickles.") from None
                mode = "thread"
        self.last_mode = mode
        if mode == "thread":
            yield from self._iter_threads(plan, context)
            return
        done_idx: set[int] = set()
        try:
            try:
                pool = self._process_pool()
                token = uuid.uuid4().hex
                futures: dict[Future, int] = {
                    pool.submit(_worker_task, token, path, get_task_kind(spec.kind).run, spec): i
                    for i, spec in enumerate(plan.specs)}
                pending = set(futures)
                while pending:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for fut in sorted(done, key=futures.__getitem__):
                        ok, value = fut.result()
                        done_idx.add(futures[fut])
                        yield futures[fut], ok, value
            except BrokenProcessPool as exc:
                yield from self._after_broken_pool(plan, context, done_idx, exc)
        finally:
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)

    def _after_broken_pool(self, plan: Plan, context: Any, done_idx: set[int], exc: BaseException):
        """A worker process died (typically a script without ``if __name__ == "__main__":``, whose re-import in
        the worker starts the sweep again, or a worker killed for memory): run the remaining tasks here, with
        the same thread count (so the numbers do not change), and say so."""
        import warnings

        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        self._broken = True
        warnings.warn(
            f"failsight's worker processes stopped ({type(exc).__name__}: {exc}); the remaining "
            f"{len(plan) - len(done_idx)} task(s) run in this process. In a script, put the code that runs the "
            "analysis under `if __name__ == \"__main__\":` (worker processes re-import the main module), or pass "
            "workers=1.", RuntimeWarning, stacklevel=4)
        yield from self._serial(plan, context, done_idx)

    def _serial(self, plan: Plan, context: Any, done_idx: set[int]):
        from failsight._threads import limit_threads

        self.last_mode = "serial (workers stopped)"
        with limit_threads(self.threads):
            for i, spec in enumerate(plan.specs):
                if i not in done_idx:
                    ok, value = _call(get_task_kind(spec.kind).run, context, spec)
                    yield i, ok, value

    def _iter_threads(self, plan: Plan, context: Any):
        from failsight._threads import limit_threads

        with limit_threads(self.threads), ThreadPoolExecutor(self.workers) as pool:
            futures = {pool.submit(_call, get_task_kind(s.kind).run, context, s): i for i, s in enumerate(plan.specs)}
            pending = set(futures)
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in sorted(done, key=futures.__getitem__):
                    ok, value = fut.result()
                    yield futures[fut], ok, value

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


# --------------------------------------------------------------------------------------------------
# Ray
# --------------------------------------------------------------------------------------------------
def _ray_task(context: Any, run: Callable[..., Any], spec: TaskSpec, threads: int) -> tuple[bool, Any]:
    set_worker_threads(threads)
    return _call(run, context, spec)


_RAY_LOCK = threading.Lock()
_RAY_REMOTE: dict[str, Any] = {}


class RayExecutor(Executor):
    """Runs each task as one Ray remote call (``num_cpus=1``) on the cluster at ``address``.

    ``address``: a cluster address (``"ray://host:10001"``, ``"host:6379"``, ``"auto"``); default the
    ``RAY_ADDRESS`` environment variable, and without either ``ray.init()`` starts a local cluster (with
    ``workers`` CPUs when given). A cluster that is already initialised in this process is reused.
    The context (model and data) is ``ray.put`` once per stage; tasks return only their partials.
    """

    backend = "ray"

    def __init__(self, address: str | None = None, *, workers: int | None = None) -> None:
        try:
            import ray
        except ImportError:
            raise FailsightInputError("the ray backend needs ray; install it with pip install 'failsight[ray]'.") \
                from None
        self._ray = ray
        address = address or os.environ.get("RAY_ADDRESS") or None
        if workers is not None:
            workers = check_int(workers, "workers")
        self._started = False
        if not ray.is_initialized():
            kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                  "configure_logging": False}
            if address is None and workers is not None:
                kw["num_cpus"] = workers
            with contextlib.redirect_stdout(io.StringIO()):
                ray.init(address=address, **kw)
            self._started = True
        self.workers = workers or int(ray.cluster_resources().get("CPU", 1))
        self.threads = 1

    def _iter(self, plan: Plan, context: Any):
        ray = self._ray
        with _RAY_LOCK:
            remote = _RAY_REMOTE.get("task")
            if remote is None:
                remote = _RAY_REMOTE["task"] = ray.remote(num_cpus=1, max_retries=0)(_ray_task)
        ctx_ref = ray.put(context)
        refs = [remote.remote(ctx_ref, get_task_kind(spec.kind).run, spec, self.threads) for spec in plan.specs]
        index = {r: i for i, r in enumerate(refs)}
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                ok, value = ray.get(ref)
                yield index[ref], ok, value
        del ctx_ref

    def close(self) -> None:
        """Leaves the cluster running (other sweeps of this process reuse it); ``ray.shutdown()`` stops it."""


#: With ``workers=None``, sweeps of less work than this (input values × tasks) run in this process: starting
#: worker processes (about a second each, importing torch) would cost more than they save. 1e7 values are 12,800
#: MNIST images: about 5 s of a CNN as costly as the issue's (2,300 images/s), 1 s of a LeNet; the 8×8 digits'
#: sweeps (449 images × 20 conditions = 0.6e6) stay in the process.
SERIAL_WORK = 1e7


def make_executor(workers: int | None = None, backend: str = "local", *, ray_address: str | None = None,
                  n_tasks: int | None = None, work: float | None = None) -> Executor:
    """The executor for ``backend`` (``"local"`` or ``"ray"``) with ``workers`` workers.

    Local: ``workers=None`` uses every usable core, except for sweeps whose ``work`` (input values × tasks)
    is below :data:`SERIAL_WORK`, which run in this process; ``workers=1`` (or a single task) runs in this
    process too.
    """
    if backend not in ("local", "ray"):
        raise FailsightInputError(f"backend must be 'local' or 'ray', got {backend!r}.")
    if workers is not None:
        workers = check_int(workers, "workers")
    if backend == "ray":
        return RayExecutor(ray_address, workers=workers)
    if ray_address:
        raise FailsightInputError("ray_address was given with backend='local'; pass backend='ray' to use the cluster.")
    w = available_cores() if workers is None else workers
    if workers is None and work is not None and work < SERIAL_WORK:
        w = 1
    if n_tasks is not None:
        w = max(1, min(w, n_tasks))
    if w == 1:
        return SerialExecutor(threads=threads_per_worker(1))
    return LocalExecutor(w)
