"""Read group labels for :mod:`failsight.slices` from a ``.npz`` or CSV file (no pandas)."""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from failsight._validate import FailsightInputError, check_int

__all__ = ["load_groups", "load_predictions"]

#: Keys a predictions ``.npz`` may hold the predictions under, in the order they are looked for.
PREDICTION_KEYS = ("pred", "probs", "logits")


def _is_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def _convert(values: list[str]) -> np.ndarray:
    """Column of strings -> int64 if all integers, else float64 if all numbers, else str."""
    try:
        return np.array([int(v) for v in values], dtype=np.int64)
    except ValueError:
        pass
    if all(_is_number(v) for v in values):
        return np.array([float(v) for v in values], dtype=np.float64)
    return np.array(values, dtype=str)


def _want(column: str | Sequence[str] | None) -> list[str] | None:
    if column is None:
        return None
    return [column] if isinstance(column, str) else [str(c) for c in column]


def _load_npz(path: Path, cols: list[str] | None) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as exc:
        raise FailsightInputError(f"could not read {path} as .npz: {exc}") from exc
    keys = cols or ["groups"]
    missing = [k for k in keys if k not in arrays]
    if missing:
        raise FailsightInputError(
            f"{path} has no array {missing[0]!r}; it holds {sorted(arrays)}. Save the group labels as "
            "np.savez(path, groups=labels) or pass column=<array name>."
        )
    out: dict[str, np.ndarray] = {}
    for k in keys:
        a = arrays[k]
        if a.ndim == 1:
            out[k] = a
        elif a.ndim == 2:  # (n, m): m slicings
            for j in range(a.shape[1]):
                out[f"{k}_{j}" if a.shape[1] > 1 else k] = a[:, j]
        else:
            raise FailsightInputError(f"array {k!r} in {path} has shape {a.shape}; expected (n,) or (n, m).")
    return out


def _load_csv(path: Path, cols: list[str] | None, header: bool | None, delimiter: str | None,
              n_samples: int | None = None) -> dict[str, np.ndarray]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise FailsightInputError(
            f"{path} is not a text (UTF-8) CSV file; group labels go in a CSV (one column per slicing) or an .npz "
            "saved with numpy.savez(path, groups=labels).") from None
    if "\x00" in text:
        raise FailsightInputError(f"{path} holds NUL bytes, so it is not a CSV text file; save the group labels as "
                                  "a CSV (one column per slicing) or an .npz (numpy.savez(path, groups=labels)).")
    all_lines = text.splitlines()
    # blank lines before the first and after the last row are layout; a blank line between rows is a sample
    # whose group label is empty (reported as such below, not silently dropped into a length mismatch)
    filled = [i for i, ln in enumerate(all_lines) if ln.strip()]
    if not filled:
        raise FailsightInputError(f"{path} is empty; expected one group label per line (optionally a header).")
    first_line = filled[0]
    lines = all_lines[filled[0]:filled[-1] + 1]
    if delimiter is None:
        try:
            delimiter = csv.Sniffer().sniff(lines[0] if len(lines) == 1 else "\n".join(lines[:20]),
                                            delimiters=",;\t|").delimiter
        except csv.Error:
            delimiter = ","
    rows = [[c.strip() for c in r] for r in csv.reader(lines, delimiter=delimiter)]
    width = len(rows[0])
    rows = [r if r and any(r) else [""] * width for r in rows]  # a blank line: every field empty
    bad = [i for i, r in enumerate(rows) if len(r) != width]
    if bad:
        raise FailsightInputError(
            f"{path}: line {first_line + bad[0] + 1} has {len(rows[bad[0]])} fields but line "
            f"{first_line + 1} has {width}; every row needs the same columns."
        )
    first = rows[0]
    if header is None and n_samples is not None and len(rows) in (n_samples, n_samples + 1):
        header = len(rows) == n_samples + 1  # the row count decides: no guessing from the values
    if header is None:
        # a header if column names were asked for and appear in line 1, or if line 1 is text where the
        # rest of its column is numeric, or if none of line 1's values recurs below it (labels repeat)
        body = rows[1:]
        numeric_below = [bool(body) and all(_is_number(r[j]) for r in body) for j in range(width)]
        text_on_top = [not _is_number(first[j]) for j in range(width)]
        recurs = [any(r[j] == first[j] for r in body) for j in range(width)]
        header = ((cols is not None and all(c in first for c in cols))
                  or any(t and nb for t, nb in zip(text_on_top, numeric_below, strict=True))
                  or (len(body) > 0 and all(text_on_top) and not any(recurs)))
    if header:
        names, body = first, rows[1:]
        if len(set(names)) != len(names):
            raise FailsightInputError(f"{path}: duplicate column names in the header {names}.")
    else:
        names = ["groups"] if width == 1 else [f"column_{j}" for j in range(width)]
        body = rows
    if not body:
        raise FailsightInputError(f"{path} has a header but no data rows.")
    if n_samples is not None and len(body) != n_samples:
        raise FailsightInputError(
            f"{path} has {len(body)} data rows ({'after a header line' if header else 'no header line'}) but "
            f"there are {n_samples} samples; pass one group label per sample, in the data's order"
            + (" (pass header=False if line 1 is a label, not column names)." if header else ".")
        )
    if cols is not None:
        missing = [c for c in cols if c not in names]
        if missing:
            raise FailsightInputError(
                f"{path} has no column {missing[0]!r}; columns are {names}"
                + ("" if header else " (no header line was found; pass header=True if line 1 holds names)")
                + "."
            )
        pick = [names.index(c) for c in cols]
    else:
        pick = list(range(width))
    out: dict[str, np.ndarray] = {}
    for j in pick:
        values = [r[j] for r in body]
        empty = [i for i, v in enumerate(values) if v == ""]
        if empty:
            line = first_line + empty[0] + 1 + (1 if header else 0)
            raise FailsightInputError(
                f"{path}: column {names[j]!r} has {len(empty)} empty value(s) (first on line {line}); every "
                "sample needs a group label."
            )
        out[names[j]] = _convert(values)
    return out


def load_groups(path: str | os.PathLike[str], column: str | Sequence[str] | None = None, *,
                header: bool | None = None, delimiter: str | None = None,
                n_samples: int | None = None) -> dict[str, np.ndarray]:
    """Read group labels into ``{slicing name: (n,) labels}`` for :func:`failsight.slices.evaluate` etc.

    * ``.npz``: the array ``groups`` (or the arrays named by ``column``); a 2-D ``(n, m)`` array becomes
      ``m`` slicings ``groups_0 .. groups_{m-1}``.
    * CSV (any other suffix): every column becomes a slicing named by its header, or only the
      ``column``(s) asked for. ``header=None`` detects a header line (column names found in it, text above
      numbers, or line-1 values that never recur); pass ``header=True/False`` to decide yourself, or
      ``n_samples`` (the number of samples the labels are for): then a file of ``n_samples + 1`` rows has a
      header and one of ``n_samples`` rows has none, and any other count is refused. A blank line between
      rows is an empty label and is refused with its line number. A
      headerless single column is named ``"groups"``, several ``column_0, column_1, ...``. Integer
      columns become int64, numeric ones float64, others str.
    """
    if n_samples is not None:
        n_samples = check_int(n_samples, "n_samples", minimum=1)
    p = Path(path)
    if not p.is_file():
        raise FailsightInputError(f"group file {p} does not exist (or is not a file).")
    cols = _want(column)
    if p.suffix.lower() == ".npz":
        return _load_npz(p, cols)
    return _load_csv(p, cols, header, delimiter, n_samples)


def _predicted_labels(scores: np.ndarray, key: str, path: Path) -> np.ndarray:
    """Predicted classes from ``pred`` (labels, as is), or ``probs``/``logits``: the argmax of an ``(n, k)``
    array (the same for probabilities and logits: softmax keeps the order), or for an ``(n,)`` / ``(n, 1)``
    binary score ``p >= 0.5`` (probs) or ``z >= 0`` (logits)."""
    from failsight._validate import as_float_array

    if key == "pred":
        return scores
    where = f"{path}['{key}']"
    arr = as_float_array(scores, where, ndim=(1, 2))
    if arr.ndim == 2 and arr.shape[1] > 1:
        return arr.argmax(axis=1)
    arr = arr.reshape(-1)
    if key == "probs":
        if arr.min() < 0 or arr.max() > 1:
            raise FailsightInputError(
                f"{where} is a 1-D binary score read as P(class 1), but its values lie in [{arr.min():.4g}, "
                f"{arr.max():.4g}], outside [0, 1]: these look like logits; save them as 'logits'.")
        return (arr >= 0.5).astype(np.int64)
    if arr.min() >= 0 and arr.max() <= 1:
        raise FailsightInputError(
            f"{where} is a 1-D binary score, but every value lies in [0, 1], so these look like probabilities, not "
            "logits (thresholds 0.5 and 0 would disagree); save them as 'probs', or as predicted labels 'pred'.")
    return (arr >= 0).astype(np.int64)


def load_predictions(path: str | os.PathLike[str], what: str = "predictions") -> tuple[np.ndarray, np.ndarray]:
    """Read ``(labels (n,), predicted labels (n,))`` from an ``.npz`` holding ``labels`` and one of ``pred``
    (predicted labels), ``probs`` or ``logits`` (``(n, k)``, or ``(n,)`` binary scores), for
    :func:`failsight.slices.evaluate` / :func:`~failsight.slices.compare`. No pickles are loaded."""
    import zipfile

    p = Path(path)
    if not p.is_file():
        raise FailsightInputError(f"{what} file {p} does not exist; pass the path of an .npz file.")
    try:
        with np.load(p, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise FailsightInputError(f"{what} file {p} is not a readable .npz ({exc}); save it with "
                                  "numpy.savez(path, labels=y, pred=predicted_labels) (or probs= / logits=).") from exc
    found = ", ".join(sorted(arrays)) or "nothing"
    keys = [k for k in PREDICTION_KEYS if k in arrays]
    if "labels" not in arrays or not keys:
        raise FailsightInputError(
            f"{what} file {p} must hold 'labels' (the true classes) and the predictions as 'pred' (labels), 'probs' "
            f"or 'logits' (found: {found}); save it with numpy.savez(path, labels=y, pred=predicted_labels).")
    if len(keys) > 1:
        raise FailsightInputError(f"{what} file {p} holds {' and '.join(map(repr, keys))}; keep one so it is clear "
                                  "which predictions to use.")
    return arrays["labels"], _predicted_labels(arrays[keys[0]], keys[0], p)
