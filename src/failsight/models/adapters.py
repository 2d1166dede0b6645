"""Model adapters: one protocol over torch modules, TorchScript files, sklearn estimators and callables.

Every pillar needs the same thing from a model: "give me logits or probabilities ``(n, k)`` for this batch
of inputs". :func:`as_model` wraps what the user has (an ``nn.Module``, a ``ScriptModule``, an estimator
with ``predict_proba`` / ``decision_function``, any callable, or a file path) in a :class:`ModelAdapter`;
:func:`load_model` opens a model file by its content. Adapters run batched, vectorised inference (torch
modules in eval mode under ``torch.inference_mode()`` with their train/eval flags restored afterwards),
validate what the model returns (2-D, finite, one row per input) and detect whether it returns logits or
probabilities on the first batch. :meth:`ModelAdapter.fingerprint` gives a stable identity hash for the
run history.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import pickle
import types
import warnings
import zipfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from failsight._validate import FailsightInputError, check_int, looks_like_probs, to_numpy

__all__ = [
    "CallableAdapter",
    "ModelAdapter",
    "SklearnAdapter",
    "TorchAdapter",
    "TorchScriptAdapter",
    "as_model",
    "load_model",
]

#: Values ``output=`` accepts.
OUTPUTS: tuple[str, ...] = ("auto", "logits", "probs")
#: Probabilities are clipped to at least this before taking logs in :meth:`ModelAdapter.predict_logits`
#: (float64 machine epsilon, as the calibrators do).
PROB_CLIP = float(np.finfo(np.float64).eps)
_TRUST = "Unpickling runs code from the file: load only model files you trust."
_FINGERPRINT_VERSION = b"failsight-fingerprint-v1"


# --------------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------------
def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _check_output_mode(output: Any) -> str:
    if output not in OUTPUTS:
        raise FailsightInputError(
            f"output must be one of {', '.join(repr(o) for o in OUTPUTS)}, got {output!r}: 'logits' for raw "
            "scores, 'probs' for probabilities (rows summing to 1), 'auto' to detect it on the first batch."
        )
    return str(output)


def _qualname(obj: Any) -> str:
    mod = getattr(obj, "__module__", None) or ""
    name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None) or type(obj).__qualname__
    return f"{mod}.{name}" if mod else str(name)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else exc.__class__.__name__


def _tensor_bytes(t: torch.Tensor) -> tuple[str, np.ndarray]:
    """``(description, uint8 view of the data)`` of a tensor on the CPU (any dtype, layout or stride)."""
    t = t.detach()
    if t.is_quantized:
        t = t.dequantize()
    if t.layout != torch.strided:
        t = t.to_dense()
    t = t.cpu().contiguous().reshape(-1)
    return f"tensor:{t.dtype}:{tuple(t.shape)};", t.view(torch.uint8).numpy()


class _Unhashable(Exception):
    """Raised by a strict :class:`_Hasher` on an object it cannot reduce to content."""


class _Hasher:
    """sha256 over an object's *content*: arrays by dtype, shape and data bytes (structured arrays field by
    field, so padding bytes never count), containers element-wise (dict keys sorted), other objects through
    ``__reduce_ex__``. Unlike pickle bytes this does not depend on object identity or memo order, so a model
    and its save/load round trip hash the same. ``strict=False`` hashes what cannot be reduced by type only."""

    _MAX_DEPTH = 200

    def __init__(self, strict: bool = True) -> None:
        self.h = hashlib.sha256(_FINGERPRINT_VERSION)
        self.strict = strict
        self._active: set[int] = set()

    def update(self, data: bytes | str) -> None:
        self.h.update(data.encode() if isinstance(data, str) else data)

    def hexdigest(self) -> str:
        return self.h.hexdigest()

    def _give_up(self, obj: Any, why: str) -> None:
        if self.strict:
            raise _Unhashable(f"{type(obj).__qualname__}: {why}")
        self.update(f"opaque:{_qualname(type(obj))};")

    def feed(self, obj: Any, depth: int = 0) -> None:
        if depth > self._MAX_DEPTH:
            self._give_up(obj, "nested too deeply")
            return
        if obj is None or isinstance(obj, (bool, int, float, complex, str)):
            self.update(f"{type(obj).__name__}:{obj!r};")
        elif isinstance(obj, (bytes, bytearray, memoryview)):
            data = bytes(obj)
            self.update(f"bytes:{len(data)};")
            self.update(data)
        elif isinstance(obj, np.ndarray):
            self._array(obj, depth)
        elif isinstance(obj, np.generic):
            self._array(np.asarray(obj), depth)
        elif isinstance(obj, np.dtype):
            self.update(f"dtype:{obj.descr if obj.names else obj.str};")
        elif isinstance(obj, torch.Tensor):
            desc, data = _tensor_bytes(obj)
            self.update(desc)
            self.update(data)
        elif isinstance(obj, (types.FunctionType, types.BuiltinFunctionType, types.ModuleType, type)):
            self.update(f"ref:{_qualname(obj)};")
        elif isinstance(obj, types.MethodType):
            self.update(f"method:{obj.__func__.__qualname__};")
            self.feed(obj.__self__, depth + 1)
        else:
            key = id(obj)
            if key in self._active:  # reference cycle
                self.update("cycle;")
                return
            self._active.add(key)
            try:
                self._container_or_reduce(obj, depth)
            finally:
                self._active.discard(key)

    def _container_or_reduce(self, obj: Any, depth: int) -> None:
        if isinstance(obj, (list, tuple)):
            self.update(f"{type(obj).__name__}:{len(obj)}[")
            for v in obj:
                self.feed(v, depth + 1)
            self.update("]")
        elif isinstance(obj, Mapping):
            items = sorted(obj.items(), key=lambda kv: (type(kv[0]).__name__, repr(kv[0])))
            self.update(f"dict:{len(items)}{{")
            for k, v in items:
                self.feed(k, depth + 1)
                self.feed(v, depth + 1)
            self.update("}")
        elif isinstance(obj, (set, frozenset)):  # order-free: hash each element alone, sort the digests
            digests = []
            for v in obj:
                sub = _Hasher(self.strict)
                sub.feed(v, depth + 1)
                digests.append(sub.hexdigest())
            self.update(f"set:{len(digests)}:{','.join(sorted(digests))};")
        else:
            try:
                rv = obj.__reduce_ex__(4)
            except Exception as exc:
                self._give_up(obj, f"cannot be reduced ({_first_line(exc)})")
                return
            if isinstance(rv, str):  # a global referenced by name
                self.update(f"global:{_qualname(type(obj))}.{rv};")
                return
            self.update(f"object:{_qualname(type(obj))}(")
            for part in rv[:3]:
                self.feed(part, depth + 1)
            for part in rv[3:5]:  # list / dict item iterators
                self.feed(None if part is None else list(part), depth + 1)
            self.update(")")

    def _array(self, a: np.ndarray, depth: int) -> None:
        self.update(f"ndarray:{a.dtype.descr if a.dtype.names else a.dtype.str}:{a.shape};")
        if a.dtype.names:  # field by field: padding bytes between fields are arbitrary
            for name in a.dtype.names:
                self.update(f"field:{name};")
                self._array(a[name], depth + 1)
        elif a.dtype.hasobject:
            for v in a.ravel():  # object arrays (e.g. string class labels) are small
                self.feed(v, depth + 1)
        else:
            self.update(np.ascontiguousarray(a).reshape(-1).view(np.uint8))


def _short(h: _Hasher) -> str:
    return h.hexdigest()[:16]


def _file_digest(path: str) -> str:
    h = hashlib.sha256(_FINGERPRINT_VERSION + b":file:")
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


@contextlib.contextmanager
def _progress_bar(enabled: bool, total: int, name: str) -> Iterator[Callable[[int], None]]:
    """Yields ``advance(n_samples)``; a transient rich bar on stderr when ``enabled``, a no-op otherwise."""
    if not enabled:
        yield lambda _n: None
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(
        TextColumn(f"[bold]predicting[/bold] {escape(name)}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("samples"), TimeElapsedColumn(), console=Console(stderr=True), transient=True,
    )
    with bar:
        task = bar.add_task("predict", total=total)
        yield lambda n: bar.update(task, advance=n)


# --------------------------------------------------------------------------------------------------
# the protocol
# --------------------------------------------------------------------------------------------------
class ModelAdapter:
    """A model behind one interface: batches of inputs in, logits or probabilities ``(n, k)`` out.

    Attributes: ``kind`` ("torch", "torchscript", "sklearn" or "callable"), ``name`` (human-readable),
    ``output`` ("logits" or "probs"; "auto" until the first batch has been seen), ``model`` (the wrapped
    object as given), ``source`` (file it was loaded from, else ``None``) and ``n_classes`` (from the model
    when it says, e.g. ``classes_`` or the last ``nn.Linear``; set from the outputs after the first predict).
    Adapters are plain callables: ``adapter(x)`` is ``adapter.predict(x)``. Build them with
    :func:`as_model` or :func:`load_model`.
    """

    kind: str = "callable"

    def __init__(self, model: Any, *, output: str = "auto", name: str | None = None,
                 source: str | None = None) -> None:
        self.model = model
        self.output = _check_output_mode(output)
        self.name = name or self._default_name()
        self.source = None if source is None else str(source)
        self.n_classes: int | None = self._classes_from_model()

    # -- hooks for subclasses ------------------------------------------------------------------------
    def _default_name(self) -> str:
        return type(self.model).__name__

    def _classes_from_model(self) -> int | None:
        return None

    def _prepare(self, x: Any) -> Any:
        """Validate / convert the whole input once; returns something sliceable along axis 0."""
        if x is None:
            raise FailsightInputError("x is None; pass a batch of inputs (numpy array or torch tensor).")
        if not hasattr(x, "__len__") or not hasattr(x, "__getitem__"):
            raise FailsightInputError(
                f"x must be a numpy array, torch tensor or list of inputs, got {type(x).__name__}."
            )
        return x

    def _session(self) -> contextlib.AbstractContextManager[Any]:
        return contextlib.nullcontext()

    def _forward(self, xb: Any) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def _default_batch_size(self, xs: Any) -> int:
        return 256

    # -- inference -----------------------------------------------------------------------------------
    def predict(self, x: Any, *, batch_size: int | None = None, progress: bool = False) -> np.ndarray:
        """Raw model outputs for ``x`` (``(n, ...)`` numpy array or torch tensor): float64 ``(n, k)``,
        logits or probabilities as :attr:`output` says. Runs in batches of ``batch_size`` (default 256;
        sklearn estimators, whose per-call overhead dominates, use up to 8192 rows of at most ~4M values)
        with a rich progress bar on stderr when ``progress``."""
        xs = self._prepare(x)
        batch_size = self._default_batch_size(xs) if batch_size is None else check_int(batch_size, "batch_size")
        n = len(xs)
        if n == 0:
            raise FailsightInputError("x is empty; pass at least one input.")
        outs = []
        with self._session(), _progress_bar(progress, n, self.name) as advance:
            for start in range(0, n, batch_size):  # loop over batches, never over samples
                xb = xs[start:start + batch_size]
                outs.append(self._check_output(self._call(xb), xb, start))
                advance(len(xb))
        return outs[0] if len(outs) == 1 else np.concatenate(outs)

    def predict_proba(self, x: Any, **kw: Any) -> np.ndarray:
        """Probabilities float64 ``(n, k)`` whose rows sum to 1: softmax of logits, or the model's
        probabilities renormalised. ``kw`` go to :meth:`predict`."""
        out = self.predict(x, **kw)
        if self.output == "logits":
            return _softmax(out)
        p = np.clip(out, 0.0, None)
        return p / p.sum(axis=1, keepdims=True)

    def predict_logits(self, x: Any, **kw: Any) -> np.ndarray:
        """Logits float64 ``(n, k)``: the model's logits, or ``log(max(p, PROB_CLIP))`` (log-probabilities,
        which softmax back to ``p``) for a model that returns probabilities. ``kw`` go to :meth:`predict`."""
        out = self.predict(x, **kw)
        if self.output == "logits":
            return out
        p = np.clip(out, 0.0, None)
        return np.log(np.clip(p / p.sum(axis=1, keepdims=True), PROB_CLIP, 1.0))

    def __call__(self, x: Any) -> np.ndarray:
        """Same as :meth:`predict` with default options."""
        return self.predict(x)

    def _call(self, xb: Any) -> Any:
        try:
            return self._forward(xb)
        except (FailsightInputError, MemoryError, torch.OutOfMemoryError):
            raise
        except Exception as exc:
            shape = tuple(getattr(xb, "shape", (len(xb),)))
            raise FailsightInputError(
                f"model {self.name!r} ({self.kind}) failed on a batch of inputs of shape {shape}: "
                f"{exc.__class__.__name__}: {_first_line(exc)}. Check that x has the shape, dtype and scaling "
                "the model expects."
            ) from exc

    def _to_array(self, out: Any) -> np.ndarray:
        if isinstance(out, Mapping) and "logits" in out:
            out = out["logits"]
        elif not isinstance(out, (np.ndarray, torch.Tensor)) and isinstance(getattr(out, "logits", None),
                                                                            torch.Tensor):
            out = out.logits  # e.g. Hugging Face model outputs
        if isinstance(out, tuple) and out and all(hasattr(o, "shape") for o in out):
            raise FailsightInputError(
                f"model {self.name!r} returned a tuple of {len(out)} arrays; it must return one "
                "(n, k) array of logits or probabilities. Wrap it, e.g. lambda x: model(x)[0]."
            )
        if isinstance(out, torch.Tensor):
            return out.detach().cpu().to(torch.float64).numpy()
        arr = to_numpy(out, f"output of model {self.name!r}")
        if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
            raise FailsightInputError(
                f"model {self.name!r} returned {arr.dtype} values; it must return numbers: logits or "
                "probabilities of shape (n, k)."
            )
        return arr.astype(np.float64, copy=False)

    def _check_output(self, raw: Any, xb: Any, start: int) -> np.ndarray:
        out = self._to_array(raw)
        rows = len(xb)
        who = f"model {self.name!r} ({self.kind})"
        if out.ndim == 1 or (out.ndim == 2 and out.shape[1] == 1):
            raise FailsightInputError(
                f"{who} returned shape {out.shape}: one score per input, but failsight needs one column per "
                "class (n, k). For a binary model return two columns: np.stack([1 - p, p], axis=1) for "
                "probabilities, or torch.cat([-z / 2, z / 2], dim=1) for a single logit z."
            )
        if out.ndim != 2:
            raise FailsightInputError(
                f"{who} returned shape {out.shape}; it must return a 2-D array (n, k) of logits or "
                "probabilities, one row per input and one column per class."
            )
        if out.shape[0] != rows:
            raise FailsightInputError(
                f"{who} returned {out.shape[0]} rows for a batch of {rows} inputs; it must return one row per "
                "input (check that it does not drop, pool or transpose the batch axis)."
            )
        k = out.shape[1]
        if start > 0 and self.n_classes is not None and k != self.n_classes:
            raise FailsightInputError(
                f"{who} returned {k} columns for inputs from index {start} but {self.n_classes} before; the "
                "number of classes must not change between batches."
            )
        if not np.isfinite(out).all():
            bad = int((~np.isfinite(out)).sum())
            hint = ""
            with contextlib.suppress(Exception):
                xin = xb.detach().cpu().numpy() if isinstance(xb, torch.Tensor) else np.asarray(xb)
                if np.issubdtype(xin.dtype, np.floating) and not np.isfinite(xin).all():
                    hint = " The inputs of that batch contain NaN/inf: clean or impute them first."
            raise FailsightInputError(
                f"{who} returned {bad} NaN/inf value(s) for inputs {start}..{start + rows - 1}."
                + (hint or " Check the model and its inputs.")
            )
        if self.output == "auto":
            self.output = "probs" if looks_like_probs(out) else "logits"
        elif self.output == "probs" and not looks_like_probs(out):
            i = int(np.abs(out.sum(axis=1) - 1.0).argmax())
            raise FailsightInputError(
                f"{who} is read as returning probabilities, but for inputs from index {start} it returned "
                f"values in [{out.min():.4g}, {out.max():.4g}] with a row summing to {out[i].sum():.6g}; "
                "pass output='logits' if it returns raw scores."
            )
        self.n_classes = k
        return out

    # -- identity ------------------------------------------------------------------------------------
    @property
    def trainable_module(self) -> nn.Module | None:
        """The ``nn.Module`` to fine-tune (e.g. by Defuse), or ``None`` when the model cannot be trained
        by failsight (TorchScript, sklearn, plain callables)."""
        return None

    @property
    def n_parameters(self) -> int | None:
        """Number of parameters (torch models), else ``None``."""
        return None

    def fingerprint(self) -> str:  # pragma: no cover - abstract
        """Stable 16-hex-character sha256 of the model's identity (see the subclasses for what counts)."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """JSON-ready summary: kind, name, output, n_classes, n_parameters, source, fingerprint."""
        return {"kind": self.kind, "name": self.name, "output": self.output, "n_classes": self.n_classes,
                "n_parameters": self.n_parameters, "source": self.source, "fingerprint": self.fingerprint()}

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, output={self.output!r}, n_classes={self.n_classes}"
                + (f", source={self.source!r}" if self.source else "") + ")")


# --------------------------------------------------------------------------------------------------
# torch
# --------------------------------------------------------------------------------------------------
def _module_device(module: nn.Module) -> torch.device:
    for t in module.parameters():
        return t.device
    for t in module.buffers():
        return t.device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _module_dtype(module: nn.Module) -> torch.dtype:
    for t in (*module.parameters(), *module.buffers()):
        if t.is_floating_point():
            return t.dtype
    return torch.float32


class TorchAdapter(ModelAdapter):
    """A ``torch.nn.Module``. Inputs (numpy or torch, ``(n, ...)``, numeric) are cast to the module's
    floating dtype and moved to its device (its parameters' device; else CUDA when available, else CPU)
    one batch at a time. Inference runs in eval mode under ``torch.inference_mode()``; every submodule's
    train/eval flag is restored afterwards, and nothing else about the module is changed."""

    kind = "torch"

    def __init__(self, model: nn.Module, *, output: str = "auto", name: str | None = None,
                 source: str | None = None) -> None:
        if not isinstance(model, nn.Module):
            raise FailsightInputError(f"TorchAdapter needs a torch.nn.Module, got {type(model).__name__}.")
        super().__init__(model, output=output, name=name, source=source)
        self._device, self._dtype = torch.device("cpu"), torch.float32  # resolved again at every predict

    def _classes_from_model(self) -> int | None:
        n = getattr(self.model, "n_classes", None)
        if isinstance(n, (int, np.integer)) and not isinstance(n, bool) and n >= 2:
            return int(n)
        last = None
        for m in self.model.modules():
            if isinstance(m, nn.Linear) or getattr(m, "original_name", None) == "Linear":
                last = m
        out = getattr(last, "out_features", None)
        return int(out) if isinstance(out, int) and out >= 2 else None

    @property
    def device(self) -> torch.device:
        """Where inference runs."""
        return _module_device(self.model)

    def _prepare(self, x: Any) -> Any:
        x = super()._prepare(x)
        if not isinstance(x, torch.Tensor):
            x = to_numpy(x, "x")
            if x.dtype == object or not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
                raise FailsightInputError(f"x must be numeric for a torch model, got dtype {x.dtype}.")
        if x.ndim < 2:
            raise FailsightInputError(
                f"x has shape {tuple(x.shape)}; torch models take a batch (n, ...) with n inputs. For a single "
                "input add a batch axis: x[None]."
            )
        return x

    @contextlib.contextmanager
    def _session(self) -> Iterator[None]:
        self._device, self._dtype = _module_device(self.model), _module_dtype(self.model)
        with _eval_inference(self.model):
            yield

    def _forward(self, xb: Any) -> Any:
        if isinstance(xb, torch.Tensor):
            t = xb
        else:
            arr = np.ascontiguousarray(xb)
            if not arr.flags.writeable:  # torch.from_numpy warns on read-only memory (e.g. np.load mmap)
                arr = arr.copy()
            t = torch.from_numpy(arr)
        return self.model(t.to(device=self._device, dtype=self._dtype))

    @property
    def trainable_module(self) -> nn.Module | None:
        """The wrapped module itself (fine-tuning changes the user's model in place)."""
        return self.model

    @property
    def n_parameters(self) -> int | None:
        """Total number of parameters."""
        return int(sum(p.numel() for p in self.model.parameters()))

    def fingerprint(self) -> str:
        """sha256 (16 hex) of the module's class and its ``state_dict`` (names, dtypes, shapes, bytes):
        the same for a module and its ``torch.save`` / ``torch.load`` round trip, different when any weight
        or buffer differs."""
        h = _Hasher(strict=False)
        h.update(f"torch:{_qualname(type(self.model))};")
        h.feed(dict(self.model.state_dict()))
        return _short(h)


@contextlib.contextmanager
def _eval_inference(module: nn.Module) -> Iterator[None]:
    """Eval mode + ``torch.inference_mode()``; each submodule's ``training`` flag restored on exit."""
    mods = list(module.modules())
    flags = [m.training for m in mods]
    module.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        for m, f in zip(mods, flags, strict=True):
            m.training = f


class TorchScriptAdapter(TorchAdapter):
    """A TorchScript module (``torch.jit.script`` / ``trace``, or a file saved by them). Runs like
    :class:`TorchAdapter` but cannot be fine-tuned (:attr:`trainable_module` is ``None``)."""

    kind = "torchscript"

    def _default_name(self) -> str:
        return str(getattr(self.model, "original_name", None) or type(self.model).__name__)

    @property
    def trainable_module(self) -> nn.Module | None:
        """``None``: failsight does not fine-tune TorchScript."""
        return None

    def fingerprint(self) -> str:
        """sha256 (16 hex) of every submodule's TorchScript code and type name plus the ``state_dict``
        tensors: the same for a scripted module and the file it was saved to, different for other code or
        other weights."""
        h = _Hasher(strict=False)
        h.update("torchscript;")
        for path, m in self.model.named_modules():
            code = ""
            with contextlib.suppress(Exception):
                code = str(m.code)
            h.feed((path, str(getattr(m, "original_name", type(m).__name__)), code))
        h.feed(dict(self.model.state_dict()))
        return _short(h)


# --------------------------------------------------------------------------------------------------
# sklearn
# --------------------------------------------------------------------------------------------------
class SklearnAdapter(ModelAdapter):
    """An sklearn-style estimator. ``predict_proba`` gives ``output="probs"``; an estimator with only
    ``decision_function`` (or ``output="logits"``) is read as returning logits: multi-class scores ``(n, k)``
    as they are, a binary score ``d`` ``(n,)`` as two columns ``[-d/2, d/2]``, whose softmax is
    ``sigmoid(d)`` for class 1 (exactly ``predict_proba`` for logistic models; for SVMs a monotone score,
    not a calibrated probability: calibrate it with ``failsight.reliability``). ``margins`` is True for an
    estimator without ``predict_proba``: its scores are not probabilities in any sense, and the audit says so
    (it calibrates them when given calibration data and refuses calibration metrics otherwise). Image inputs
    ``(n, C, H, W)`` are flattened to ``(n, C*H*W)`` when that matches the estimator's ``n_features_in_``.
    Columns follow ``classes_`` (see :attr:`classes`)."""

    kind = "sklearn"

    def __init__(self, model: Any, *, output: str = "auto", name: str | None = None,
                 source: str | None = None) -> None:
        output = _check_output_mode(output)
        has_proba, has_dec = hasattr(model, "predict_proba"), hasattr(model, "decision_function")
        if not (has_proba or has_dec):
            raise FailsightInputError(
                f"{type(model).__name__} has neither predict_proba nor decision_function, so failsight cannot "
                "get class scores from it; use a probabilistic classifier (e.g. SVC(probability=True)) or wrap "
                "it in sklearn.calibration.CalibratedClassifierCV."
            )
        if output == "probs" and not has_proba:
            raise FailsightInputError(
                f"output='probs' but {type(model).__name__} has no predict_proba; use output='logits' (its "
                "decision_function) or 'auto'."
            )
        if output == "logits" and not has_dec:
            raise FailsightInputError(
                f"output='logits' but {type(model).__name__} has no decision_function; use output='probs' "
                "(its predict_proba) or 'auto'."
            )
        if output == "auto":
            output = "probs" if has_proba else "logits"
        self._method = "predict_proba" if output == "probs" else "decision_function"
        #: decision margins of a model without probabilities (LinearSVC, RidgeClassifier, hinge SGD): scores to
        #: rank by or calibrate, not logits whose softmax means anything
        self.margins = not has_proba
        super().__init__(model, output=output, name=name, source=source)

    @property
    def classes(self) -> np.ndarray | None:
        """The estimator's ``classes_`` (column order of the outputs), or ``None`` when it has none."""
        c = getattr(self.model, "classes_", None)
        return None if c is None else np.asarray(c)

    def _classes_from_model(self) -> int | None:
        c = self.classes
        return len(c) if c is not None and c.ndim == 1 and len(c) >= 2 else None

    def _prepare(self, x: Any) -> Any:
        x = to_numpy(super()._prepare(x), "x")
        nf = getattr(self.model, "n_features_in_", None)
        if isinstance(nf, (int, np.integer)):  # fitted on a feature matrix (text pipelines have no n_features_in_)
            if x.ndim < 2:
                raise FailsightInputError(
                    f"x has shape {x.shape}; {self.name} takes a 2-D array (n_samples, {nf}). For one feature "
                    "use x.reshape(-1, 1); for a single sample x[None]."
                )
            per_sample = int(np.prod(x.shape[1:]))
            if x.ndim > 2:
                if per_sample != nf:
                    raise FailsightInputError(
                        f"x has shape {x.shape} ({per_sample} values per input) but {self.name} was fitted on "
                        f"{nf} features; flattening cannot match. Pass inputs prepared as for fitting."
                    )
                x = x.reshape(len(x), per_sample)  # images (n, C, H, W) -> (n, C*H*W), as fitted
            elif per_sample != nf:
                raise FailsightInputError(
                    f"x has {per_sample} features but {self.name} was fitted on {nf}; pass inputs prepared "
                    "as for fitting."
                )
        return x

    def _default_batch_size(self, xs: Any) -> int:
        per_sample = int(np.prod(xs.shape[1:])) if getattr(xs, "ndim", 1) > 1 else 1
        return int(np.clip((1 << 22) // max(per_sample, 1), 256, 8192))

    def _forward(self, xb: Any) -> Any:
        out = np.asarray(getattr(self.model, self._method)(xb))
        if self._method == "decision_function" and out.ndim == 1:  # binary: score d for class 1
            out = np.stack([-out / 2.0, out / 2.0], axis=1)
        c = self.classes
        if out.ndim == 2 and c is not None and c.ndim == 1 and out.shape[1] != len(c):
            raise FailsightInputError(
                f"{self.name}.{self._method} returned {out.shape[1]} columns but the estimator has {len(c)} "
                "classes (classes_); for SVC use decision_function_shape='ovr' or probability=True."
            )
        return out

    def fingerprint(self) -> str:
        """sha256 (16 hex) of the fitted estimator's content (parameters and fitted arrays, walked through
        pickle's ``__reduce_ex__`` protocol but hashed by value), so an estimator, its pickle and its joblib
        round trips hash the same. Falls back to the file's bytes (when loaded from one) or pickle bytes for
        objects that cannot be walked."""
        h = _Hasher(strict=True)
        h.update("sklearn;")
        try:
            h.feed(self.model)
        except (_Unhashable, RecursionError):
            if self.source is not None and Path(self.source).is_file():
                return _file_digest(self.source)
            with contextlib.suppress(Exception):
                return hashlib.sha256(_FINGERPRINT_VERSION + pickle.dumps(self.model, protocol=4)).hexdigest()[:16]
            weak = _Hasher(strict=False)
            weak.feed(self.model)
            return _short(weak)
        return _short(h)

    def describe(self) -> dict[str, Any]:
        """As :meth:`ModelAdapter.describe`, plus ``classes`` (the estimator's ``classes_`` as a list)."""
        c = self.classes
        return {**super().describe(), "classes": None if c is None else c.tolist(), "margins": self.margins}


# --------------------------------------------------------------------------------------------------
# callables
# --------------------------------------------------------------------------------------------------
class CallableAdapter(ModelAdapter):
    """Any callable mapping a batch (the slice of ``x`` as given: numpy array, torch tensor or list) to
    logits or probabilities ``(n, k)`` as numpy or torch. Whether it returns probabilities is detected
    on the first batch (entries in [0, 1], rows summing to 1) unless ``output`` says."""

    kind = "callable"

    def __init__(self, model: Callable[[Any], Any], *, output: str = "auto", name: str | None = None,
                 source: str | None = None) -> None:
        if not callable(model):
            raise FailsightInputError(f"CallableAdapter needs a callable, got {type(model).__name__}.")
        super().__init__(model, output=output, name=name, source=source)

    def _default_name(self) -> str:
        m = self.model
        if isinstance(m, (types.FunctionType, types.MethodType, types.BuiltinFunctionType)):
            return str(getattr(m, "__qualname__", getattr(m, "__name__", "callable")))
        return type(m).__name__

    def _forward(self, xb: Any) -> Any:
        return self.model(xb)

    def fingerprint(self) -> str:
        """sha256 (16 hex) of the callable's qualified name, its source code when available, and what it
        carries: defaults, closure variables, the bound object of a method, a callable object's state.

        This is *weak*: weights or globals the function reads from elsewhere (a module-level model, a file)
        do not count, so two different models can share a fingerprint. Wrap real models as ``nn.Module`` or
        estimators for a reliable identity."""
        m = self.model
        h = _Hasher(strict=False)
        fn = m.__func__ if isinstance(m, types.MethodType) else m
        target = fn if isinstance(fn, (types.FunctionType, types.BuiltinFunctionType)) else type(fn)
        h.update(f"callable:{_qualname(target)};")
        with contextlib.suppress(OSError, TypeError):
            h.update(inspect.getsource(target))
        if isinstance(fn, types.FunctionType):
            cells = [c.cell_contents for c in (fn.__closure__ or ()) if _cell_filled(c)]
            h.feed((fn.__defaults__, fn.__kwdefaults__, cells))
        if isinstance(m, types.MethodType):
            h.feed(m.__self__)
        elif not isinstance(m, (types.FunctionType, types.BuiltinFunctionType)):
            h.feed(m)  # a callable object: its state
        return _short(h)


def _cell_filled(cell: Any) -> bool:
    try:
        cell.cell_contents  # noqa: B018 - raises ValueError for an empty cell
    except ValueError:
        return False
    return True


# --------------------------------------------------------------------------------------------------
# entry points
# --------------------------------------------------------------------------------------------------
def as_model(obj: Any, *, output: str = "auto") -> ModelAdapter:
    """Wrap ``obj`` in a :class:`ModelAdapter`.

    ``obj`` may be a ``ModelAdapter`` (returned as is; a copy when ``output`` fixes an undetected mode), a
    path to a model file (see :func:`load_model`), a TorchScript module, a ``torch.nn.Module``, an estimator
    with ``predict_proba`` or ``decision_function``, or any callable mapping a batch to logits or
    probabilities ``(n, k)``. ``output`` is "logits", "probs" or "auto" (detected on the first batch).
    """
    output = _check_output_mode(output)
    if isinstance(obj, ModelAdapter):
        if output == "auto" or obj.output == output:
            return obj
        if obj.output != "auto":
            raise FailsightInputError(
                f"the adapter for {obj.name!r} already reads its outputs as {obj.output!r}, not {output!r}; "
                "build a new adapter from the model with the output you want."
            )
        import copy

        clone = copy.copy(obj)
        clone.output = output
        return clone
    if isinstance(obj, (str, Path)):
        return load_model(obj, output=output)
    if isinstance(obj, torch.jit.ScriptModule):
        return TorchScriptAdapter(obj, output=output)
    if isinstance(obj, nn.Module):
        return TorchAdapter(obj, output=output)
    if hasattr(obj, "predict_proba") or hasattr(obj, "decision_function"):
        return SklearnAdapter(obj, output=output)
    if callable(obj):
        return CallableAdapter(obj, output=output)
    hint = (" It has predict() but no class scores: use a classifier with predict_proba."
            if hasattr(obj, "predict") else "")
    raise FailsightInputError(
        f"cannot use a {type(obj).__name__} as a model: pass a torch.nn.Module, a TorchScript module, an "
        f"estimator with predict_proba, a callable returning logits or probabilities (n, k), or a model file.{hint}"
    )


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _zip_names(path: Path) -> list[str] | None:
    if not zipfile.is_zipfile(path):
        return None
    with contextlib.suppress(zipfile.BadZipFile, OSError), zipfile.ZipFile(path) as z:
        return z.namelist()
    return None


def _refuse_non_model(obj: Any, path: Path) -> None:
    if isinstance(obj, Mapping):
        keys = ", ".join(repr(k) for k in list(obj)[:4]) + (", ..." if len(obj) > 4 else "")
        raise FailsightInputError(
            f"{path} holds a dict (a state_dict or checkpoint; keys {keys}), not a model; failsight needs the "
            "architecture too. Save the module itself: torch.save(model, path) or "
            "torch.jit.script(model).save(path)."
        )


def _torch_load(path: Path, device: str) -> Any:
    try:  # safe first: weights-only unpickling runs no code and tells state_dicts apart from modules
        obj = torch.load(str(path), map_location=device, weights_only=True)
    except pickle.UnpicklingError:
        pass  # holds classes (a pickled module): needs full unpickling
    except Exception as exc:
        raise FailsightInputError(
            f"could not load a model from {path} (torch.load: {exc.__class__.__name__}: {_first_line(exc)}). "
            "Save it with torch.jit.script(model).save(path) or torch.save(model, path)."
        ) from exc
    else:
        _refuse_non_model(obj, path)
        raise FailsightInputError(f"{path} holds a {type(obj).__name__}, not a torch.nn.Module; save the model itself.")
    try:
        return torch.load(str(path), map_location=device, weights_only=False)
    except Exception as exc:
        missing = isinstance(exc, (ModuleNotFoundError, AttributeError))
        raise FailsightInputError(
            f"could not load a model from {path} (torch.load: {exc.__class__.__name__}: {_first_line(exc)}). "
            + ("The file refers to a class that cannot be imported here: make the code that defined the model "
               "importable (same module path as when saving), or save it with torch.jit.script(model).save(path). "
               if missing else
               "Save it with torch.jit.script(model).save(path) (or torch.jit.trace), or torch.save(model, path) "
               "with the model's class importable when loading. ")
            + _TRUST
        ) from exc


def _unpickle(path: Path) -> Any:
    try:
        try:
            import joblib
        except ImportError:  # pragma: no cover - joblib comes with scikit-learn
            with open(path, "rb") as f:
                return pickle.load(f)
        return joblib.load(path)
    except Exception as exc:
        missing = isinstance(exc, (ModuleNotFoundError, AttributeError))
        raise FailsightInputError(
            f"could not load a model from {path} ({exc.__class__.__name__}: {_first_line(exc)}). "
            + ("The file refers to a class or package that cannot be imported here: install the same library "
               "(and version) that saved it. " if missing else
               "Supported: TorchScript files, torch.save(model) files and sklearn estimators saved with pickle "
               "or joblib. ")
            + _TRUST
        ) from exc


def load_model(path: str | Path, *, output: str = "auto", device: str | None = None) -> ModelAdapter:
    """Open a model file, recognised by its content (not its extension), as a :class:`ModelAdapter`.

    Supported: TorchScript (``torch.jit.script(m).save(path)``), a whole module saved with
    ``torch.save(model, path)`` (its class must be importable), and an estimator saved with ``pickle`` or
    ``joblib`` (compressed or not). A ``state_dict`` (or any dict checkpoint) is refused with instructions:
    failsight cannot rebuild an architecture from weights. torch models are loaded onto ``device`` (default
    CUDA when available, else CPU).

    **Security:** unpickling (``torch.save`` and pickle/joblib files) runs code from the file; load only
    files you trust. State dicts are recognised with torch's weights-only loader before anything else runs.
    """
    output = _check_output_mode(output)
    p = Path(path)
    if not p.exists():
        raise FailsightInputError(
            f"model file {p} does not exist; pass a TorchScript, torch.save(model), pickle or joblib file."
        )
    if p.is_dir():
        raise FailsightInputError(f"{p} is a folder; pass the model file inside it.")
    dev = device or _default_device()
    names = _zip_names(p)
    with open(p, "rb") as f:
        head = f.read(64)
    legacy_torch = head.startswith(pickle.dumps(torch.serialization.MAGIC_NUMBER, protocol=2))
    if names is not None:
        if any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
            try:
                with warnings.catch_warnings():  # torch >= 2.9 deprecates TorchScript; existing files still load
                    warnings.simplefilter("ignore", DeprecationWarning)
                    obj: Any = torch.jit.load(str(p), map_location=dev)
            except Exception as exc:
                raise FailsightInputError(
                    f"could not load a model from {p} (TorchScript: {exc.__class__.__name__}: {_first_line(exc)}); "
                    "save it again with torch.jit.script(model).save(path)."
                ) from exc
        elif any(n.endswith("data.pkl") for n in names):
            obj = _torch_load(p, dev)
        else:
            what = "an .npz of arrays (data?)" if any(n.endswith(".npy") for n in names) else "a zip archive"
            raise FailsightInputError(
                f"could not load a model from {p}: it is {what}, not a model. Pass a TorchScript, torch.save(model), "
                "pickle or joblib model file."
            )
    elif legacy_torch:
        obj = _torch_load(p, dev)
    else:
        obj = _unpickle(p)
    _refuse_non_model(obj, p)
    if isinstance(obj, (str, Path)):
        raise FailsightInputError(f"{p} holds a {type(obj).__name__}, not a model; save the model itself.")
    if isinstance(obj, nn.Module):
        obj.eval()
    adapter = as_model(obj, output=output)
    adapter.source = str(p)
    adapter.name = f"{adapter.name} ({p.name})"
    return adapter
