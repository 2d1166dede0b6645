"""Open a model the way PyTorch users save it: a class in their code plus a ``state_dict`` checkpoint.

:func:`load_model` takes a *spec* and optional *weights*:

- ``"mypkg.nets:Net"`` — an importable module and the class (or factory function) in it;
- ``"path/to/net.py:Net"`` — a Python file and the class in it (its folder is importable while it runs, so
  sibling modules it imports are found);
- a model file (TorchScript, ``torch.save(model)``, pickled/joblib sklearn estimator) — as
  :func:`failsight.models.adapters.load_model`, which this extends;
- a class, a factory or an ``nn.Module`` instance (Python use).

The class is built with ``model_args`` (a dict or a JSON object string: ``{"width": 64}``) and gets the
weights from ``weights``: a plain ``state_dict``, a checkpoint dict holding one under ``state_dict``,
``model_state_dict``, ``model``, ``net``... (PyTorch Lightning, the PyTorch tutorials, timm, DDP scripts),
with key prefixes such as ``model.`` (a LightningModule's attribute), ``module.`` (``DataParallel`` / DDP) or
``_orig_mod.`` (``torch.compile``) removed when that is what makes the keys match. Missing, unexpected or
mis-shaped keys get an error naming the first ones, never a partly loaded model.

**Security:** importing a module or a ``.py`` file runs its code, and so does unpickling a whole-module file;
load only code and files you trust. Weight files are read with torch's weights-only loader first.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import pickle
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from failsight._validate import FailsightInputError
from failsight.models.adapters import (
    ModelAdapter,
    TorchAdapter,
    _check_output_mode,
    _default_device,
    _first_line,
)
from failsight.models.adapters import load_model as _load_model_file

__all__ = ["extract_state_dict", "load_model", "load_state_dict", "parse_model_args", "resolve_model_spec"]

#: Checkpoint keys that may hold the model's state dict, in the order they are tried.
CHECKPOINT_KEYS: tuple[str, ...] = ("state_dict", "model_state_dict", "model_state", "model", "net", "network",
                                    "module", "weights", "params", "ema_state_dict", "ema")
#: How many mismatching keys an error message names.
_SHOW = 5
_DOTTED = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")


def parse_model_args(model_args: Any) -> dict[str, Any]:
    """Constructor keyword arguments from ``None``, a mapping or a JSON object string (``'{"width": 64}'``)."""
    if model_args is None:
        return {}
    if isinstance(model_args, str):
        try:
            model_args = json.loads(model_args)
        except json.JSONDecodeError as exc:
            raise FailsightInputError(
                f"model arguments {model_args!r} are not valid JSON ({exc.msg} at character {exc.pos}); write "
                """them as a JSON object, e.g. '{"width": 64, "n_classes": 10}'."""
            ) from None
    if not isinstance(model_args, Mapping) or not all(isinstance(k, str) for k in model_args):
        raise FailsightInputError(
            f"model arguments must be a JSON object (name -> value), got {type(model_args).__name__}; e.g. "
            """'{"width": 64}'."""
        )
    return dict(model_args)


def _is_class_spec(spec: str) -> bool:
    """``"pkg.mod:Name"`` or ``"file.py:Name"`` (not a Windows drive letter such as ``C:\\x``)."""
    if ":" not in spec:
        return False
    left, right = spec.rsplit(":", 1)
    if not right or not _DOTTED.match(right) or len(left) <= 1:
        return False
    return left.endswith(".py") or bool(_DOTTED.match(left))


def _import_file(path: Path) -> Any:
    """Import a ``.py`` file as a module (registered in ``sys.modules`` so its objects pickle)."""
    if not path.is_file():
        raise FailsightInputError(f"model code file {path} does not exist; pass the .py file that defines the class.")
    name = "failsight_user_" + re.sub(r"\W", "_", str(path.resolve().with_suffix("")))
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:  # pragma: no cover - only for non-.py paths, refused above
        raise FailsightInputError(f"cannot import {path} as Python code.")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    folder = str(path.resolve().parent)
    added = folder not in sys.path
    if added:  # sibling modules of the file (from layers import Block) resolve while it runs
        sys.path.insert(0, folder)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise FailsightInputError(
            f"importing {path} failed ({exc.__class__.__name__}: {_first_line(exc)}); fix the file or its imports."
        ) from exc
    finally:
        if added:
            sys.path.remove(folder)
    return module


def resolve_model_spec(spec: str) -> Any:
    """The class or factory named by ``"pkg.mod:Name"`` or ``"path/to/file.py:Name"`` (``Name`` may be dotted)."""
    left, attr = spec.rsplit(":", 1)
    if left.endswith(".py"):
        module = _import_file(Path(left))
    else:
        try:
            module = importlib.import_module(left)
        except ImportError as exc:
            raise FailsightInputError(
                f"cannot import module {left!r} for model {spec!r} ({exc.__class__.__name__}: {_first_line(exc)}); "
                "install the package, run from the folder that holds it (or add it to PYTHONPATH), or name the "
                "file instead: path/to/net.py:Net."
            ) from exc
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            public = sorted(n for n, v in vars(module).items()
                            if not n.startswith("_") and isinstance(v, type) and issubclass(v, nn.Module))
            raise FailsightInputError(
                f"{left} has no {attr!r}; torch modules defined there: {', '.join(public) or 'none'}."
            )
        obj = getattr(obj, part)
    if not callable(obj):
        raise FailsightInputError(f"{spec} is a {type(obj).__name__}, not a class or a function that builds a model.")
    return obj


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def extract_state_dict(obj: Any, source: str = "the checkpoint") -> dict[str, torch.Tensor]:
    """The tensors of a ``state_dict`` inside what ``torch.load`` returned: the dict itself, a module's
    ``state_dict()``, or the first of :data:`CHECKPOINT_KEYS` holding one (searched one level down, e.g.
    ``{"model": {"state_dict": ...}}``). Non-tensor entries beside tensors (Lightning's ``_extra_state``
    stays a tensor only when set) are dropped."""
    if isinstance(obj, nn.Module):
        return dict(obj.state_dict())
    if _is_state_dict(obj):
        return dict(obj)
    if isinstance(obj, Mapping):
        for key in CHECKPOINT_KEYS:
            if key in obj:
                inner = obj[key]
                if isinstance(inner, nn.Module):
                    return dict(inner.state_dict())
                if _is_state_dict(inner):
                    return dict(inner)
                if isinstance(inner, Mapping):
                    with_tensors = {k: v for k, v in inner.items() if isinstance(v, torch.Tensor)}
                    if with_tensors and all(isinstance(k, str) for k in with_tensors):
                        if len(with_tensors) >= len(inner) / 2:
                            return with_tensors
                        for key2 in CHECKPOINT_KEYS:
                            if _is_state_dict(inner.get(key2)):
                                return dict(inner[key2])
        tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
        if tensors and len(tensors) >= len(obj) / 2:  # a state dict with a few metadata entries beside it
            return tensors
        keys = ", ".join(repr(k) for k in list(obj)[:8]) + (", ..." if len(obj) > 8 else "")
        raise FailsightInputError(
            f"{source} is a dict without a state_dict in it (keys: {keys}); failsight looks under "
            f"{', '.join(repr(k) for k in CHECKPOINT_KEYS[:4])}, ... Save model.state_dict() or a dict holding it "
            "under 'state_dict'."
        )
    raise FailsightInputError(
        f"{source} holds a {type(obj).__name__}, not a state_dict; save it with torch.save(model.state_dict(), path)."
    )


def _strip(sd: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def _match_keys(sd: dict[str, torch.Tensor], target: set[str]) -> tuple[dict[str, torch.Tensor], str]:
    """Remove the key prefix(es) that make ``sd`` match ``target`` best; returns (state dict, prefix removed).

    Candidates are the leading one to three dotted parts of the checkpoint's own keys (``model.``, ``module.``,
    ``model.module.``...), tried repeatedly while they increase the number of matching keys; a prefix is only
    removed when it matches strictly more keys than leaving it."""
    removed = ""
    best = len(target & sd.keys())
    while best < len(target):
        cands = {".".join(k.split(".")[:j]) + "." for k in sd for j in range(1, min(4, k.count(".") + 1))}
        scored = []
        for p in cands:
            stripped = _strip(sd, p)
            scored.append((len(target & stripped.keys()), -len(stripped), p, stripped))
        if not scored:
            break
        hits, _, p, stripped = max(scored, key=lambda t: (t[0], t[1], t[2]))
        if hits <= best:
            break
        sd, best, removed = stripped, hits, removed + p
    return sd, removed


def load_state_dict(model: nn.Module, state: Any, *, source: str = "the checkpoint") -> str:
    """Load ``state`` (a state dict or checkpoint, see :func:`extract_state_dict`) into ``model`` strictly,
    after removing the key prefix that makes the keys match (returned: ``""`` when none). Raises
    :class:`FailsightInputError` naming the first missing, unexpected and mis-shaped keys; ``model`` is left
    unchanged then."""
    sd = extract_state_dict(state, source)
    own = model.state_dict()
    sd, prefix = _match_keys(sd, set(own))
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    wrong = [f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}" for k in own
             if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        def show(keys: list[str]) -> str:
            return ", ".join(keys[:_SHOW]) + (f" (+{len(keys) - _SHOW} more)" if len(keys) > _SHOW else "")

        parts = []
        if missing:
            parts.append(f"missing from the weights: {show(missing)}")
        if unexpected:
            parts.append(f"not in the model: {show(unexpected)}")
        if wrong:
            parts.append(f"shapes differ (weights vs model): {show(wrong)}")
        note = f" (after removing the prefix {prefix!r})" if prefix else ""
        raise FailsightInputError(
            f"the weights in {source} do not fit {type(model).__name__}{note}: " + "; ".join(parts)
            + ". Check --model (the class) and --model-args (its constructor arguments, e.g. widths and the number "
              "of classes) against the code that saved the weights."
        )
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as exc:  # dtype/complex corner cases torch still refuses
        raise FailsightInputError(f"the weights in {source} do not load into {type(model).__name__}: "
                                  f"{_first_line(exc)}") from exc
    return prefix


def _read_weights(path: Path, device: str) -> Any:
    if not path.is_file():
        raise FailsightInputError(f"weights file {path} does not exist; pass the file written by torch.save(...).")
    try:
        return torch.load(str(path), map_location=device, weights_only=True)
    except pickle.UnpicklingError:
        pass  # holds objects beyond tensors (e.g. Lightning hyper-parameters): needs full unpickling
    except Exception as exc:
        raise FailsightInputError(
            f"could not read weights from {path} (torch.load: {exc.__class__.__name__}: {_first_line(exc)})."
        ) from exc
    try:
        return torch.load(str(path), map_location=device, weights_only=False)
    except Exception as exc:
        raise FailsightInputError(
            f"could not read weights from {path} (torch.load: {exc.__class__.__name__}: {_first_line(exc)}); it "
            "refers to classes that cannot be imported here. Save model.state_dict() alone."
        ) from exc


def load_model(spec: Any, weights: str | Path | Mapping[str, Any] | None = None, model_args: Any = None, *,
               device: str | None = None, output: str = "auto") -> ModelAdapter:
    """Open a model from a spec and optional weights (see the module docstring) as a
    :class:`~failsight.models.adapters.ModelAdapter` in eval mode on ``device`` (default CUDA when available,
    else CPU).

    ``spec``: ``"pkg.mod:Class"``, ``"path/to/net.py:Class"``, a model file path, a class/factory, or an
    ``nn.Module``. ``weights``: a file (``torch.save`` of a state dict or checkpoint) or an already loaded
    state dict / checkpoint; for a whole-module file it replaces the saved weights. ``model_args``: constructor
    keyword arguments (dict or JSON string), only with a class or factory. ``output``: ``"logits"``,
    ``"probs"`` or ``"auto"``.
    """
    output = _check_output_mode(output)
    dev = device or _default_device()
    args = parse_model_args(model_args)
    source = str(spec) if isinstance(spec, (str, Path)) else getattr(spec, "__qualname__", type(spec).__name__)
    factory: Any = None
    if isinstance(spec, (str, Path)) and _is_class_spec(str(spec)):
        factory = resolve_model_spec(str(spec))
    elif isinstance(spec, nn.Module):
        if args:
            raise FailsightInputError("model_args only apply to a class or factory, not to a built model.")
        model = spec
    elif isinstance(spec, (str, Path)):
        if args:
            raise FailsightInputError(
                f"--model-args need a class to build (--model pkg.mod:Class or path/to/net.py:Class), but {spec} "
                "names a model file."
            )
        try:
            adapter = _load_model_file(spec, output=output, device=dev)
        except FailsightInputError as exc:
            if "holds a dict" in str(exc):
                raise FailsightInputError(
                    f"{spec} holds weights (a state_dict or checkpoint), not a model. Name the class that defines "
                    f"the network and pass the file as weights: --model mypkg.nets:Net --weights {spec} (or "
                    f"--model path/to/net.py:Net), in Python load_model('mypkg.nets:Net', weights='{spec}')."
                ) from None
            raise
        if weights is None:
            return adapter
        if not isinstance(adapter.model, nn.Module) or isinstance(adapter.model, torch.jit.ScriptModule):
            raise FailsightInputError(f"{spec} holds a {adapter.kind} model; --weights only loads into torch modules "
                                      "(name the class instead: --model mypkg.nets:Net --weights ckpt.pt).")
        model = adapter.model
    elif callable(spec):
        factory = spec
    else:
        raise FailsightInputError(
            f"cannot open a model from a {type(spec).__name__}; pass 'pkg.mod:Class', 'path/to/net.py:Class', a "
            "model file, a class or an nn.Module."
        )
    if factory is not None:
        try:
            model = factory(**args)
        except TypeError as exc:
            raise FailsightInputError(
                f"building {source} with arguments {args} failed ({_first_line(exc)}); pass its constructor "
                """arguments as --model-args '{"name": value}'."""
            ) from exc
        if not isinstance(model, nn.Module):
            raise FailsightInputError(f"{source} built a {type(model).__name__}, not a torch.nn.Module.")
        if weights is None:
            import warnings

            warnings.warn(f"{source} was built without --weights: its weights are random.", stacklevel=2)
    if weights is not None:
        if isinstance(weights, (str, Path)):
            state, wsrc = _read_weights(Path(weights), "cpu"), str(weights)
        else:
            state, wsrc = weights, "the weights given"
        load_state_dict(model, state, source=wsrc)
    model = model.to(dev).eval()
    adapter = TorchAdapter(model, output=output)
    adapter.source = str(weights) if isinstance(weights, (str, Path)) else source
    adapter.name = f"{adapter.name} ({Path(str(weights)).name})" if isinstance(weights, (str, Path)) else adapter.name
    return adapter
