"""``failsight monitor``: record windows of a deployed model in a run store, attach late labels, write the page.

Mounted by :mod:`failsight.cli` as one command (thin: everything is :class:`~failsight.monitor.Monitor`)::

    failsight monitor --model m.pt --reference cal.npz --db monitor.db batch_*.npz   # one window per file
    failsight monitor --probs --reference cal_preds.npz --db monitor.db preds_*.npz  # saved predictions
    failsight monitor labels --db monitor.db --window 3 labels.npz                   # labels arrive later
    failsight monitor report --db monitor.db --out mon                               # mon/report.html
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from failsight._validate import FailsightInputError

__all__ = ["monitor_command"]

EXIT_BAD_INPUT = 2


def _fail(message: str) -> None:
    typer.echo(f"failsight: error: {message}", err=True)
    raise typer.Exit(EXIT_BAD_INPUT)


def _read_npz(path: Path, what: str) -> dict[str, Any]:
    import zipfile

    import numpy as np

    if not path.is_file():
        raise FailsightInputError(f"{what} file {path} does not exist; pass the path of an .npz file.")
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise FailsightInputError(f"{what} file {path} is not a readable .npz ({exc}).") from exc


def _scores(arrays: dict[str, Any], path: Path, what: str) -> tuple[str, Any]:
    has = [k for k in ("probs", "logits") if k in arrays]
    if len(has) != 1:
        raise FailsightInputError(
            f"{what} file {path} must hold exactly one of 'probs' or 'logits' (found: {', '.join(arrays) or 'nothing'}); "
            "save it with numpy.savez(path, probs=p) (and labels=y where known).")
    return has[0], arrays[has[0]]


def _labels(arrays: dict[str, Any]) -> Any:
    for key in ("labels", "y"):
        if key in arrays:
            return arrays[key]
    return None


def _inputs(path: Path, what: str, require_labels: bool) -> tuple[Any, Any]:
    from failsight.datasets.io import load_data

    d = load_data(path, require_labels=require_labels, what=what)
    return d.x, d.y


def monitor_command(
    files: list[Path] = typer.Argument(None, show_default=False, metavar="[report|labels] FILE.npz...",
                                       help="Windows to record, in order, one per file (.npz with 'x' inputs, or "
                                            "with --probs 'probs'/'logits'; 'labels' optional). Or 'report' / "
                                            "'labels' as the first word (see below)."),
    db: str = typer.Option(..., "--db", show_default=False,
                           help="Run store: a SQLite file (created if missing) or a database URL."),
    model: Path | None = typer.Option(None, "--model", "-m", show_default=False, metavar="MODEL",
                                      help="The model (TorchScript, torch.save'd module or pickled sklearn "
                                           "estimator; load only files you trust). Not needed with --probs."),
    reference: Path | None = typer.Option(None, "--reference", "-r", show_default=False, metavar="REF.npz",
                                          help="Labelled held-out data the model was not trained on (x + labels; "
                                               "with --probs: probs or logits + labels). Only when the monitor is "
                                               "new (or to check it is the same reference)."),
    probs: bool = typer.Option(False, "--probs", help="Files hold saved predictions ('probs' or 'logits')."),
    name: str = typer.Option("default", "--name", help="Monitor name inside the store."),
    max_risk: float | None = typer.Option(None, "--max-risk", show_default=False,
                                          help="Requirement: the largest acceptable error rate of accepted "
                                               "predictions (selects the confidence threshold)."),
    alpha: float | None = typer.Option(None, "--alpha", show_default=False,
                                       help="False-alarm level of the alerts under no shift (default 0.05)."),
    min_accuracy: float | None = typer.Option(None, "--min-accuracy", show_default=False,
                                              help="Accuracy floor (default: reference accuracy - 0.05)."),
    estimator: str | None = typer.Option(None, "--estimator", show_default=False,
                                         help="Default estimator: shift_regression (learnt from simulated shifts "
                                              "of the reference; the default with --model and image inputs), atc "
                                              "(the default otherwise), doc, calibrated_confidence, "
                                              "mean_confidence."),
    no_simulate: bool = typer.Option(False, "--no-simulate",
                                     help="Do not simulate shifts of the reference (faster set-up; the "
                                          "per-sample estimators only)."),
    window: int | None = typer.Option(None, "--window", show_default=False,
                                      help="With 'labels': the window the labels belong to."),
    out: Path | None = typer.Option(None, "--out", "-o", show_default=False,
                                    help="With 'report': output folder for report.html."),
    force: bool = typer.Option(False, "--force", "-f", help="With 'report': overwrite an existing report."),
) -> None:
    """Monitor a deployed model: estimated accuracy without labels, drift, the requirement, alerts.

    Each FILE is one window, processed in order and recorded in --db with the reference's fingerprint;
    running again on the same --db continues the monitor. Files that hold labels get them attached
    (true accuracy beside the estimate). Exit code 1 when a window raised an alert, 2 on bad input (nothing
    of that window is recorded).

    Later labels: failsight monitor labels --db monitor.db --window 3 labels.npz

    The page: failsight monitor report --db monitor.db --out mon
    """
    files = list(files or [])
    try:
        if files and str(files[0]) == "report":
            _report(db, name, out, force, files[1:])
            return
        if files and str(files[0]) == "labels":
            _attach(db, name, window, files[1:])
            return
        alerts = _record(db, name, model, reference, probs, files, max_risk, alpha, min_accuracy, estimator,
                         no_simulate)
    except FailsightInputError as exc:
        _fail(str(exc))
        return
    if alerts:
        raise typer.Exit(1)


def _open_monitor(db: str, name: str, model: Path | None, reference: Path | None, probs: bool,
                  settings: dict[str, Any]) -> Any:
    from failsight.monitor import Monitor

    net = None
    if not probs:
        if model is None:
            raise FailsightInputError("pass --model (the model the windows are run through), or --probs when the "
                                      "files hold saved predictions.")
        from failsight.models.adapters import load_model

        net = load_model(model)
    ref = None
    if reference is not None:
        if probs:
            arrays = _read_npz(reference, "reference")
            _, scores = _scores(arrays, reference, "reference")
            y = _labels(arrays)
            if y is None:
                raise FailsightInputError(f"reference file {reference} holds no 'labels'; the reference must be labelled.")
            ref = (scores, y)
        else:
            ref = _inputs(reference, "reference", True)
    return Monitor(net, ref, store=db, name=name, **settings)


def _record(db: str, name: str, model: Path | None, reference: Path | None, probs: bool, files: list[Path],
            max_risk: float | None, alpha: float | None, min_accuracy: float | None, estimator: str | None,
            no_simulate: bool = False) -> int:
    if not files:
        raise FailsightInputError("no window files given; pass one or more .npz files (one window each), or "
                                  "'report' / 'labels' as the first word.")
    for f in files:  # fail before recording anything when a file is missing
        if not f.is_file():
            raise FailsightInputError(f"window file {f} does not exist.")
    settings = {"max_risk": max_risk, "alpha": alpha, "min_accuracy": min_accuracy, "estimator": estimator,
                "simulate": False if no_simulate else None}
    mon = _open_monitor(db, name, model, reference, probs, settings)
    n_alerts = 0
    try:
        _check_files(mon, files, probs)  # all or nothing: a bad file anywhere records no window at all
        for f in files:
            if probs:
                arrays = _read_npz(f, "window")
                kind, scores = _scores(arrays, f, "window")
                y = _labels(arrays)
                w = mon.update(**{kind: scores}, name=f.name)
            else:
                x, y = _inputs(f, "window", False)
                w = mon.update(x, name=f.name)
            if y is not None:
                w = mon.add_labels(w.window_id, y)
            n_alerts += bool(w.alerts)
            typer.echo(w.summary())
    finally:
        mon.close()
    return n_alerts


def _check_files(mon: Any, files: list[Path], probs: bool) -> None:
    """Validate every window file (one at a time, memory stays flat) before anything is recorded."""
    from failsight._validate import check_labels
    from failsight.monitor.core import MIN_WINDOW

    for f in files:
        try:
            if probs:
                arrays = _read_npz(f, "window")
                kind, scores = _scores(arrays, f, "window")
                n = len(mon._read_window(None, scores if kind == "probs" else None, scores if kind == "logits" else None))
            else:
                x, _ = _inputs(f, "window", False)
                arrays = _read_npz(f, "window") if f.suffix == ".npz" else {}
                n = len(x)
                if n < MIN_WINDOW:
                    raise FailsightInputError(f"the window has {n} samples; the monitor needs at least {MIN_WINDOW}.")
            y = _labels(arrays)
            if y is not None:
                y = check_labels(y, n_classes=mon.n_classes, name="labels")
                if len(y) != n:
                    raise FailsightInputError(f"{n} samples but {len(y)} labels.")
        except FailsightInputError as exc:
            raise FailsightInputError(f"window file {f}: {exc} No window was recorded.") from exc


def _attach(db: str, name: str, window: int | None, files: list[Path]) -> None:
    from failsight.monitor import Monitor

    if window is None or len(files) != 1:
        raise FailsightInputError("usage: failsight monitor labels --db DB --window ID LABELS.npz (one file with "
                                  "'labels' or 'y').")
    arrays = _read_npz(files[0], "labels")
    y = _labels(arrays)
    if y is None:
        raise FailsightInputError(f"labels file {files[0]} holds no 'labels' or 'y' array.")
    with Monitor(store=_existing(db), name=name) as mon:
        w = mon.add_labels(window, y)
    typer.echo(w.summary())


def _existing(db: str) -> str:
    if "://" not in db and not Path(db).expanduser().is_file():
        raise FailsightInputError(f"no monitor store at {db}; record windows first (failsight monitor ... --db {db}).")
    return db


def _report(db: str, name: str, out: Path | None, force: bool, extra: list[Path]) -> None:
    from failsight.monitor.report import stored_report
    from failsight.report.html import check_writable

    if out is None or extra:
        raise FailsightInputError("usage: failsight monitor report --db DB --out FOLDER [--name NAME] [--force].")
    path = out / "report.html"
    check_writable([path], force)
    report = stored_report(_existing(db), None if name == "default" else name)
    report.write(path, force=force)
    typer.echo(f"Report: {path.resolve()}")
