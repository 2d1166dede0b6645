"""Command-line interface (typer). Thin: every command calls library functions and the report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from failsight import __version__
from failsight.demo import DEMO_STEPS

app = typer.Typer(
    name="failsight",
    help="Find where, why and how a classifier fails - and fix what can be fixed.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
)

def _mount_runs() -> None:
    from failsight.runs.cli import runs_app

    app.add_typer(runs_app, name="runs", help="Run history: list recorded audits and compare two of them.")


#: Exit code for bad input (the message on stderr says what is wrong and how to fix it).
EXIT_BAD_INPUT = 2


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"failsight {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(False, "--version", callback=_version_callback, is_eager=True,
                                 help="Show the version and exit."),
) -> None:
    """failsight: reliability, robustness and debugging beyond the test set."""


def _fail(message: str | BaseException) -> None:
    typer.echo(f"failsight: error: {_reason(message)}", err=True)
    raise typer.Exit(EXIT_BAD_INPUT)


# ----------------------------------------------------------------------------------------------------------
# argument checks: every command runs them BEFORE any work starts (a typo must not cost a full run)
# ----------------------------------------------------------------------------------------------------------

def _reason(exc: str | BaseException) -> str:
    """The message of a user error. Commands catch ``FailsightInputError`` (bad input) and ``OSError`` (the
    system refused a read or write: permissions, a full disk, a path below a file) and exit 2 with it, never
    a traceback; an OSError names the file and the system's reason."""
    if isinstance(exc, OSError) and not isinstance(exc, ValueError) and exc.strerror:
        where = f" {exc.filename}" if exc.filename else ""
        return f"cannot access{where}: {exc.strerror}; check the path and its permissions (and free disk space)."
    return str(exc)


def _out_dir(value: str | Path) -> Path:
    """``--out`` parser: refuses an empty or blank path (``Path('')`` would silently mean the current folder)."""
    if isinstance(value, Path):
        return value
    if not str(value).strip():
        raise typer.BadParameter("the output folder is empty; pass a folder such as --out report.")
    return Path(value)


def _check_out(out: Path, names: Any, force: bool) -> list[Path]:
    """``--out`` can take ``names`` (file names inside it): it is, or can become, a writable folder, and no
    file (or link) there is overwritten without ``--force``. Creates nothing. Returns the file paths."""
    from failsight._io import check_output, check_output_dir

    out = check_output_dir(out, "--out")
    paths = [out / n for n in names]
    check_output(paths, force)
    return paths


def _check_db(db: str | None, out: Path, *, record: bool, name: str | None, db_force: bool) -> str | None:
    """``--db``/``--name``/``--db-force`` of a command that records a run: the run store is reachable and
    usable (created later, after the work) and the name valid. Returns the store to record in (``None``:
    ``--no-record``)."""
    from failsight._validate import FailsightInputError

    if not record:
        if db is not None or name is not None or db_force:
            given = ", ".join(o for o, v in (("--db", db), ("--name", name), ("--db-force", db_force)) if v)
            raise FailsightInputError(f"{given} given with --no-record; drop --no-record to record the run, or "
                                      f"drop {given}.")
        return None
    from failsight.auditing.core import STORE_NAME, default_store
    from failsight.runs.store import RunStore, check_run_name

    if name is not None:
        check_run_name(name, "--name")
    if db is not None and not db.strip():
        raise FailsightInputError("--db is empty; pass a SQLite file path or a database URL, or leave it out.")
    store = db or default_store(out)
    if db is None and Path(store) == Path(out).resolve().parent / STORE_NAME and not Path(store).parent.exists():
        return store  # beside --out, in a folder created with it (--out was checked)
    RunStore.check(store, allow_foreign=db_force)
    return store


def _check_level(value: float, option: str) -> float:
    """A significance level or probability strictly between 0 and 1."""
    from failsight._validate import FailsightInputError

    if not 0.0 < value < 1.0:
        raise FailsightInputError(f"{option} must lie in (0, 1), strictly between 0 and 1; got {value:g}. E.g. {option} 0.05.")
    return value


def _requires(given: bool, option: str, needs: str, needs_given: bool) -> None:
    """Refuse an option that has no effect without another one (silently ignoring it would mislead)."""
    from failsight._validate import FailsightInputError

    if given and not needs_given:
        raise FailsightInputError(f"{option} has no effect without {needs}; pass {needs} too, or drop {option}.")


# ---------------------------------------------------------------------------------------- model options
# --model / --weights / --model-args are the same for every command that opens a model (audit, robustness,
# defuse); one place defines their help and turns them into a model.
_MODEL_SPEC_HELP = ("a model file (TorchScript, torch.save(model), pickled/joblib sklearn estimator), or the class "
                    "that defines the network - mypkg.nets:Net or path/to/net.py:Net - with --weights. Unpickling and "
                    "importing run code: only load files you trust.")


def _weights_option() -> Any:
    return typer.Option(None, "--weights", show_default=False, metavar="CKPT.pt",
                        help="Weights for --model: a state_dict, or a checkpoint holding one under 'state_dict', "
                             "'model' or 'model_state_dict' (Lightning, DDP 'module.' prefixes are handled).")


def _model_args_option() -> Any:
    return typer.Option(None, "--model-args", show_default=False, metavar="JSON",
                        help="""Constructor arguments of the --model class as JSON, e.g. '{"width": 64}'.""")


def _open_model(spec: Path | str, weights: Path | None = None, model_args: str | None = None, *,
                torch_module: bool = False, device: str | None = None) -> Any:
    """The model named by the shared options: an adapter, or (``torch_module``) the ``nn.Module`` itself, on
    ``device`` (default CUDA when present, else CPU)."""
    from failsight._validate import FailsightInputError
    from failsight.models.loading import load_model

    adapter = load_model(str(spec), weights=weights, model_args=model_args, device=device)
    if not torch_module:
        return adapter
    import torch

    if not isinstance(adapter.model, torch.nn.Module):
        raise FailsightInputError(
            f"{spec} holds a {adapter.kind} model ({adapter.name}); this command needs a torch.nn.Module (a class "
            "with --weights, torch.save(model, path) or torch.jit.script(model).save(path))."
        )
    adapter.model.eval()
    return adapter.model


def _load_predictions(path: Path, what: str) -> tuple[Any, Any, bool]:
    """Read ``labels`` and ``logits`` or ``probs`` from an ``.npz``; returns ``(labels, preds, is_logits)``."""
    import zipfile

    import numpy as np

    from failsight._validate import FailsightInputError

    if not path.is_file():
        raise FailsightInputError(f"{what} file {path} does not exist; pass the path of an .npz file.")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise FailsightInputError(
            f"{what} file {path} is not a readable .npz ({exc}); save it with "
            "numpy.savez(path, labels=..., logits=...) or probs=...."
        ) from exc
    found = ", ".join(sorted(arrays)) or "nothing"
    has_logits, has_probs = "logits" in arrays, "probs" in arrays
    if "labels" not in arrays or not (has_logits or has_probs):
        raise FailsightInputError(
            f"{what} file {path} must hold 'labels' and either 'logits' or 'probs' (found: {found}); "
            "save it with numpy.savez(path, labels=y, logits=z)."
        )
    if has_logits and has_probs:
        raise FailsightInputError(
            f"{what} file {path} holds both 'logits' and 'probs'; keep one so it is clear which to use."
        )
    return arrays["labels"], arrays["logits" if has_logits else "probs"], has_logits


@app.command(short_help="Train a small CNN on the bundled digits and audit it with every pillar.")
def demo(
    out: Path = typer.Option(Path("failsight-demo"), "--out", "-o", parser=_out_dir, metavar="DIR",
                             help="Output folder for report.html and results.json."),
    seed: int = typer.Option(0, "--seed", help="Seed of the data split, the training and the bootstrap."),
    force: bool = typer.Option(False, "--force", "-f", help="Overwrite an existing report in --out."),
    epochs: int | None = typer.Option(None, "--epochs", help="Training epochs of the small CNN (default 30 on the "
                                      "digits, 2 on MNIST).", hidden=True),
    mnist: Path | None = typer.Option(None, "--mnist", show_default=False, metavar="DIR",
                                      help="Run the demo on MNIST: a folder with the four IDX files you have "
                                           "(train-images-idx3-ubyte[.gz], ...). Nothing is downloaded."),
    mnist_train: int | None = typer.Option(None, "--mnist-train", show_default=False, metavar="N",
                                           help="With --mnist: use N training images (default all 55k)."),
    steps: str = typer.Option(",".join(DEMO_STEPS), "--steps",
                              help="Comma-separated pillars to run (reliability is always run)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress (bar in a terminal, log lines otherwise)."),
) -> None:
    """Train a small CNN on the bundled handwritten digits and audit it with every pillar.

    Runs on the CPU in a few minutes with data shipped with scikit-learn or generated (no download): the
    full audit of the CNN - reliability (calibration, calibrators, a risk-guaranteed confidence threshold),
    robustness (corruptions, shift and OOD detection), Defuse (regions to label), per-slice accuracy
    against a half-width baseline - plus Defuse on a planted bug (found, labelled by an oracle, fixed) and
    the shapes x colours partial-failure study. Writes OUT/report.html (open it in a browser),
    OUT/results.json and OUT/regions/, and records the run in failsight-runs.db beside OUT.
    """
    from failsight._validate import FailsightInputError
    from failsight.demo import run_demo

    try:
        _check_out(out, ("report.html", "results.json"), force)
        step_list = [s.strip() for s in steps.split(",") if s.strip()]
        if "reliability" not in step_list:
            step_list.insert(0, "reliability")
        res = run_demo(out, seed=seed, force=force, progress=not quiet, epochs=epochs,
                       steps=step_list, mnist=mnist, mnist_train=mnist_train)
    except (FailsightInputError, OSError) as exc:
        _fail(exc)
        return
    typer.echo(res.audit.summary())
    for line in _demo_findings(res):
        typer.echo(line)
    if res.run_id is not None:
        typer.echo(f"recorded as run {res.run_id} in {res.db} (failsight runs list / compare).")
    timing = ", ".join(f"{k} {v:.0f} s" for k, v in res.step_seconds.items() if k != "audit")
    typer.echo(f"done in {res.seconds:.0f} s ({timing}). Report: {Path(res.report_path).resolve()}")


def _demo_findings(res: Any) -> list[str]:
    """One line for each showcase beyond the audit."""
    lines = []
    if res.defuse is not None:
        lines.append("planted bug: " + res.defuse.summary())
    if res.study is not None:
        n_pf = sum(bool(c.partial_failure or c.task_partial_failures) for c in res.study.comparisons)
        lines.append(f"study: {n_pf} of {len(res.study.comparisons)} ablations hide a regression on some slice")
    return lines


@app.command(short_help="Reliability report from saved predictions (.npz of labels + logits/probs).")
def reliability(
    pred: Path = typer.Argument(..., help="Test predictions: .npz with 'labels' and 'logits' or 'probs'.",
                                show_default=False, metavar="PRED.npz"),
    out: Path = typer.Option(..., "--out", "-o", parser=_out_dir, metavar="DIR",
                             help="Output folder for report.html and results.json.",
                             show_default=False),
    calibration: Path | None = typer.Option(
        None, "--calibration", "-c", show_default=False,
        help="Held-out calibration predictions (.npz, same keys): fits the calibrators and selects the threshold."),
    max_risk: float = typer.Option(0.01, "--max-risk", help="Largest acceptable error rate on answered inputs."),
    confidence: float = typer.Option(0.95, "--confidence", help="Probability that the risk guarantee holds; "
                                     "also the level of the intervals."),
    n_bins: int = typer.Option(15, "--n-bins", help="Bins of the calibration metrics and diagrams."),
    calibrators: str | None = typer.Option(
        None, "--calibrators", show_default=False,
        help="Comma-separated calibrators to compare (default: all): temperature, vector, matrix, dirichlet, "
             "platt, isotonic, histogram, beta."),
    n_boot: int = typer.Option(1000, "--n-boot", help="Bootstrap resamples of the intervals."),
    seed: int = typer.Option(0, "--seed", help="Seed of the bootstrap intervals."),
    force: bool = typer.Option(False, "--force", "-f", help="Overwrite an existing report in --out."),
) -> None:
    """Reliability report for saved predictions (.npz with labels and logits or probs).

    Writes OUT/report.html and OUT/results.json: calibration metrics with intervals, reliability diagrams
    before/after the best calibrator, confidence histograms, a risk-coverage curve and the confidence
    threshold that meets --max-risk. With --calibration the calibrators are fitted and the threshold is
    selected on that split and checked on PRED.

    Example: failsight reliability test.npz --calibration cal.npz --max-risk 0.02 --out reliability-report
    """
    from failsight._validate import FailsightInputError
    from failsight.reliability.analysis import analyze
    from failsight.report.html import Report, write_json
    from failsight.report.sections import reliability_section

    try:
        report_path, results_path = _check_out(out, ("report.html", "results.json"), force)
        _requires(calibrators is not None, "--calibrators", "--calibration", calibration is not None)
        y, preds, is_logits = _load_predictions(pred, "predictions")
        y_cal = cal = None
        if calibration is not None:
            y_cal, cal, cal_logits = _load_predictions(calibration, "calibration")
            if cal_logits != is_logits:
                raise FailsightInputError(
                    f"{pred} holds {'logits' if is_logits else 'probs'} but {calibration} holds "
                    f"{'logits' if cal_logits else 'probs'}; save both the same way."
                )
        names = None if calibrators is None else [c.strip() for c in calibrators.split(",") if c.strip()]
        analysis = analyze(y, preds, y_cal=y_cal, cal=cal, is_logits=is_logits, max_risk=max_risk,
                           confidence=confidence, n_bins=n_bins, n_boot=n_boot, calibrators=names,
                           seed=seed)
        report = Report(title="failsight reliability report", subtitle=f"Predictions from {pred.name}"
                        + (f", calibration split from {calibration.name}" if calibration else ""),
                        meta={"predictions": str(pred), "samples": analysis.n_test, "classes": analysis.n_classes})
        report.add(reliability_section(analysis))
        report.write(report_path, force=force)
        write_json(results_path, {"failsight_version": __version__, "reliability": analysis}, force=force)
    except (FailsightInputError, OSError) as exc:
        _fail(exc)
        return
    typer.echo(f"accuracy {analysis.accuracy:.2%}, ECE {analysis.metric('ece').value:.4f}")
    if analysis.threshold is None:
        typer.echo("no threshold meets the risk requirement (see the report).")
    typer.echo(f"Report: {report_path.resolve()}")


def _int_list(text: str, what: str) -> list[int]:
    """Parse "1,3,5" into [1, 3, 5] (the library checks the range)."""
    from failsight._validate import FailsightInputError

    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise FailsightInputError(f"{what} must be comma-separated integers such as 1,3,5; got {text!r}.") from None


@app.command(short_help="Robustness report for a torch model on labelled images (.npz).")
def robustness(
    model: Path = typer.Option(..., "--model", "-m", show_default=False, metavar="MODEL",
                               help="Torch model: " + _MODEL_SPEC_HELP),
    weights: Path | None = _weights_option(),
    model_args: str | None = _model_args_option(),
    data: Path = typer.Option(..., "--data", "-d", show_default=False, metavar="DATA.npz",
                              help="Labelled test images: .npz with 'x' (n,C,H,W), (n,H,W,C) or (n,H,W), floats in "
                                   "[0, 1] or uint8, and 'y' (labels)."),
    out: Path = typer.Option(..., "--out", "-o", parser=_out_dir, metavar="DIR", show_default=False,
                             help="Output folder for report.html and results.json."),
    severities: str = typer.Option("1,3,5", "--severities", help="Comma-separated severities in 1..5."),
    shifts: str | None = typer.Option(None, "--shifts", show_default=False,
                                      help="Comma-separated shift names (default: every corruption and cue shift)."),
    reference: Path | None = typer.Option(None, "--reference", show_default=False, metavar="REF.npz",
                                          help="Held-out in-distribution images (.npz, 'y' optional): reference of "
                                               "the shift detectors and of the Mahalanobis OOD score. Default: half "
                                               "of DATA."),
    ood: Path | None = typer.Option(None, "--ood", show_default=False, metavar="OOD.npz",
                                    help="Out-of-distribution images (.npz with 'x') for the OOD-detection table."),
    seed: int = typer.Option(0, "--seed", help="Seed of the corruptions and the detection trials."),
    workers: int | None = typer.Option(None, "--workers", show_default=False, min=1,
                                       help="Parallel workers of the shift sweep (default: every core)."),
    backend: str = typer.Option("local", "--backend", help="Where the sweep runs: local or ray."),
    ray_address: str | None = typer.Option(None, "--ray-address", show_default=False, envvar="RAY_ADDRESS",
                                           help="Ray cluster address (default $RAY_ADDRESS; without one a "
                                                "local cluster is started). Needs --backend ray."),
    force: bool = typer.Option(False, "--force", "-f", help="Overwrite an existing report in --out."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress (bar in a terminal, log lines otherwise)."),
) -> None:
    """Robustness report for a torch model on labelled images.

    Corrupts DATA with every shift at each severity and writes OUT/report.html and OUT/results.json:
    accuracy and ECE per shift x severity, overconfidence under shift, sample grids, shift detection from
    unlabelled inputs and, with --ood, OOD detection.

    Example: failsight robustness --model cnn.pt --data test.npz --ood noise.npz --out robustness-report
    """
    from failsight._validate import FailsightInputError
    from failsight.report.html import Report, write_json
    from failsight.robustness.analysis import analyze_robustness
    from failsight.robustness.io import load_labelled_images
    from failsight.robustness.report import robustness_section

    report_path, results_path = out / "report.html", out / "results.json"
    try:
        _check_out(out, ("report.html", "results.json"), force)
        sev = _int_list(severities, "--severities")
        names = None if shifts is None else [s.strip() for s in shifts.split(",") if s.strip()]
        test = load_labelled_images(data)
        ref = load_labelled_images(reference, require_labels=False) if reference is not None else None
        ood_set = load_labelled_images(ood, require_labels=False) if ood is not None else None
        net = _open_model(model, weights, model_args, torch_module=True, device="cpu")
        analysis = analyze_robustness(
            net, test.x, test.y, shifts=names, severities=sev,
            x_reference=None if ref is None else ref.x, y_reference=None if ref is None else ref.y,
            x_ood=None if ood_set is None else ood_set.x, seed=seed, progress=not quiet, workers=workers,
            backend=backend, ray_address=ray_address if backend == "ray" else None)
        report = Report(title="failsight robustness report",
                        subtitle=f"Model {model.name} on {data.name}" + (f", OOD images from {ood.name}" if ood else ""),
                        meta={"model": str(model), "data": str(data), "images": test.x.shape[0], "seed": seed})
        report.add(robustness_section(analysis))
        report.write(report_path, force=force)
        inputs = {"data": test, "reference": ref, "ood": ood_set}
        write_json(results_path, {"failsight_version": __version__, "inputs": inputs, "robustness": analysis},
                   force=force)
    except (FailsightInputError, OSError) as exc:
        _fail(exc)
        return
    for loaded in (test, ref, ood_set):
        for note in () if loaded is None else loaded.notes:
            typer.echo(f"note: {Path(loaded.path).name}: {note}", err=True)
    for line in analysis.findings():
        typer.echo(line)
    typer.echo(f"done in {analysis.seconds['total']:.0f} s. Report: {report_path.resolve()}")


@app.command(short_help="Defuse: find misclassification regions beyond the test set, label them, fix them.")
def defuse(
    model: Path = typer.Option(..., "--model", "-m", show_default=False, metavar="MODEL",
                               help="Torch classifier (logits out): " + _MODEL_SPEC_HELP),
    weights: Path | None = _weights_option(),
    model_args: str | None = _model_args_option(),
    train: Path = typer.Option(..., "--train", show_default=False, metavar="TRAIN.npz",
                               help="The classifier's training images ('x') and labels ('y'): trains the generator "
                                    "and is mixed into the fine-tuning."),
    seeds: Path = typer.Option(..., "--seeds", show_default=False, metavar="VAL.npz",
                               help="Labelled images ('x', 'y') the search starts from, e.g. a validation split; "
                                    "also picks the mixing weight of the correction."),
    out: Path = typer.Option(..., "--out", "-o", parser=_out_dir, metavar="DIR", show_default=False,
                             help="Output folder: report.html, results.json, generator.pt, regions/ (grids + "
                                  "labels.csv) and, with --labels, fixed_model.pt."),
    labels: Path | None = typer.Option(None, "--labels", show_default=False, metavar="labels.csv",
                                       help="Filled-in labels file (one class or 'discard' per region): corrects "
                                            "the model and evaluates the fix."),
    test: Path | None = typer.Option(None, "--test", show_default=False, metavar="TEST.npz",
                                     help="Real test images ('x', 'y') to check that test accuracy holds."),
    generator: Path | None = typer.Option(None, "--generator", show_default=False, metavar="GEN.pt",
                                          help="A saved failsight VAE (default: OUT/generator.pt if it exists, "
                                               "else one is trained and saved there)."),
    radius: float = typer.Option(1.0, "--radius", help="Latent perturbation radius (in latent standard deviations)."),
    n_samples: int = typer.Option(32, "--n-samples", help="Latent samples per seed image."),
    seed: int = typer.Option(0, "--seed", help="Seed of every random step (the same seed gives the same regions)."),
    force: bool = typer.Option(False, "--force", "-f", help="Overwrite existing outputs in --out (never the "
                                                           "labels file passed with --labels)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress (bar in a terminal, log lines otherwise)."),
) -> None:
    """Defuse (Slack et al. 2021): search a generative model's latent space for natural inputs the model gets
    wrong, group them into misclassification regions and write a grid per region with a labels.csv to fill in.

    Workflow: run once, open OUT/regions/*.png, write one class (or 'discard') per region into
    OUT/regions/labels.csv, then run again with --labels OUT/regions/labels.csv --force: the same seed and
    generator give the same regions, the model is fine-tuned on samples from the labelled regions and
    OUT/fixed_model.pt is written with a before/after table in the report.
    """
    import torch

    from failsight._io import atomic_open, check_output
    from failsight._validate import FailsightInputError
    from failsight.defuse import VAE, Defuse, FileLabeler, load_regions, save_regions
    from failsight.defuse.report import defuse_section
    from failsight.report.html import Report, write_json
    from failsight.robustness.io import load_labelled_images

    report_path, results_path = out / "report.html", out / "results.json"
    gen_path = generator if generator is not None else out / "generator.pt"
    fixed_path = out / "fixed_model.pt"
    progress = not quiet  # a bar in a terminal, plain log lines on stderr otherwise
    try:
        _check_out(out, ["report.html", "results.json"] + (["fixed_model.pt"] if labels is not None else
                                                           ["regions/labels.csv", "regions/regions.npz"]), force)
        if not gen_path.is_file():  # trained and saved here: never through a link
            check_output([gen_path], force)
        if labels is not None and not labels.is_file():
            raise FailsightInputError(f"labels file {labels} does not exist; run without --labels first to "
                                      "export one, fill in its 'label' column, then pass it.")
        net = _open_model(model, weights, model_args, torch_module=True)
        if isinstance(net, torch.jit.ScriptModule):
            raise FailsightInputError(f"{model} is TorchScript, which Defuse cannot fine-tune here; pass the class "
                                      "and its weights (--model mypkg.nets:Net --weights ckpt.pt) or "
                                      "torch.save(model, path).")
        tr = load_labelled_images(train)
        sd = load_labelled_images(seeds)
        te = load_labelled_images(test) if test is not None else None
        d = Defuse(net, seed=seed, progress=progress)
        if gen_path.is_file():
            d.generator = VAE.load(gen_path)
        else:
            d.fit_generator(tr.x)
            out.mkdir(parents=True, exist_ok=True)
            d.generator.save(gen_path)
        found = d.search(sd.x, sd.y, n_samples=n_samples, radius=radius)
        if found.n_found == 0:
            raise FailsightInputError(f"the search found no misclassified samples around {len(sd.y)} seeds; "
                                      f"try a larger --radius (now {radius:g}) or more --n-samples.")
        labeler = FileLabeler(out / "regions")
        saved = out / "regions" / "regions.npz"
        correction = given = None
        if labels is None:
            regions = d.find_regions(found)
            labeler.export(regions, d._names(), force=force)
            save_regions(regions, saved, overwrite=force)
        else:
            # the regions the labels were written for (ids must match), not a fresh fit
            regions = load_regions(saved, d.generator) if saved.is_file() else d.find_regions(found)
            given = d.label(regions, lambda regs, names: FileLabeler.read(labels, regs, names))
            fixed, correction = d.correct(regions, given, tr.x, tr.y, x_val=sd.x, y_val=sd.y,
                                          x_test=None if te is None else te.x, y_test=None if te is None else te.y)
            with atomic_open(fixed_path, "wb", force=force) as fh:
                torch.save(fixed, fh)
        result = d.result(found, regions, given, correction)
        report = Report(title="failsight Defuse report", subtitle=f"Model {model.name}; seeds from {seeds.name}",
                        meta={"model": str(model), "generator": str(gen_path), "seed": seed})
        report.add(defuse_section(result, labeler_note=None if labels is None else f"Labels from {labels}."))
        report.write(report_path, force=force)
        write_json(results_path, {"failsight_version": __version__, "defuse": result}, force=force)
    except (FailsightInputError, OSError) as exc:
        _fail(exc)
        return
    fold = getattr(regions, "fold", len(regions))
    typer.echo(f"{found.n_found} errors found; {len(regions)} region(s), {fold} above the fold (label these first).")
    for r in regions[:fold]:
        typer.echo(f"  {r.describe()}")
    if len(regions) > fold:
        typer.echo(f"  {len(regions) - fold} more below the fold (score under a tenth of the top region's, or beyond "
                   "the first five); see the report.")
    if correction is None:
        typer.echo(f"Label the regions in {labeler.labels_path} (a class or 'discard' per row; grids beside it), "
                   "then rerun with --labels that file --force.")
    else:
        typer.echo(f"region accuracy {correction.region_accuracy_before:.1%} -> {correction.region_accuracy_after:.1%}"
                   + (f"; test {correction.test_accuracy_before:.1%} -> {correction.test_accuracy_after:.1%}"
                      if correction.test_accuracy_before is not None else "")
                   + f". Fixed model: {fixed_path.resolve()}")
    typer.echo(f"Report: {report_path.resolve()}")


@app.command(short_help="Per-slice metrics, and a baseline-vs-candidate check for hidden regressions.")
def slices(
    pred: Path = typer.Argument(..., metavar="PRED.npz", show_default=False,
                                help=".npz with 'labels' and 'pred' (labels), 'probs' or 'logits'."),
    groups: Path = typer.Option(..., "--groups", "-g", show_default=False,
                                help="Slice labels: a CSV (one column per slicing, header optional) or an "
                                     ".npz with a 'groups' array, one row per sample."),
    baseline: Path | None = typer.Option(None, "--baseline", "-b", show_default=False,
                                         help="Predictions of the model PRED is compared against (same "
                                              "samples, same keys): flags partial failures."),
    out: Path = typer.Option(..., "--out", "-o", parser=_out_dir, metavar="DIR", show_default=False,
                             help="Output folder."),
    alpha: float | None = typer.Option(None, "--alpha", show_default=False,
                                       help="Significance level of the per-slice tests against --baseline "
                                            "(default 0.05)."),
    min_size: int = typer.Option(20, "--min-size", help="Slices smaller than this get no interval or test."),
    force: bool = typer.Option(False, "--force", "-f", help="Overwrite an existing report in --out."),
) -> None:
    """Per-slice accuracy with intervals; with --baseline, paired per-slice deltas with McNemar tests
    (Holm-corrected) and a PARTIAL FAILURE flag when the aggregate improves or holds while a slice regresses.

    Example: failsight slices new.npz --baseline old.npz --groups groups.csv --out slices-report
    """
    import numpy as np

    from failsight._validate import FailsightInputError
    from failsight.report.html import Report, write_json
    from failsight.report.slices import slices_section
    from failsight.slices import compare, evaluate, load_groups, load_predictions

    try:
        report_path, results_path = _check_out(out, ("report.html", "results.json"), force)
        _requires(alpha is not None, "--alpha", "--baseline", baseline is not None)
        alpha = _check_level(0.05 if alpha is None else alpha, "--alpha")
        y, y_pred = load_predictions(pred, "predictions")
        y_base = base_pred = None
        if baseline is not None:
            y_base, base_pred = load_predictions(baseline, "baseline")
            if y_base.shape != y.shape or not np.array_equal(y_base, y):
                raise FailsightInputError(f"{baseline} and {pred} hold different labels; the baseline must be "
                                          "evaluated on the same samples in the same order.")
        g = load_groups(groups, n_samples=len(y))
        rep = evaluate(y, y_pred, g, min_size=min_size)
        comparison = None
        if baseline is not None:
            comparison = compare(y, base_pred, y_pred, g, alpha=alpha, min_size=min_size)
        report = Report(title="failsight per-slice report", subtitle=f"Predictions from {pred.name}"
                        + (f" against {baseline.name}" if baseline else ""),
                        meta={"samples": rep.n, "slicings": ", ".join(g)})
        report.add(slices_section(rep, comparison))
        report.write(report_path, force=force)
        write_json(results_path, {"failsight_version": __version__, "slices": rep, "comparison": comparison},
                   force=force)
    except (FailsightInputError, OSError) as exc:
        _fail(exc)
        return
    typer.echo(f"overall {rep.overall:.2%} on {rep.n} samples")
    if comparison is not None:
        typer.echo(comparison.summary())
    typer.echo(f"Report: {report_path.resolve()}")



@app.command(short_help="Audit your own model over every pillar: one report, results.json and a run record.")
def audit(
    model: Path = typer.Option(..., "--model", "-m", show_default=False, metavar="MODEL",
                               help="The model: " + _MODEL_SPEC_HELP),
    weights: Path | None = _weights_option(),
    model_args: str | None = _model_args_option(),
    test: Path = typer.Option(..., "--test", "-t", show_default=False, metavar="TEST",
                              help="Labelled test data: .npz ('x', 'y', optional 'groups'), an IDX images file "
                                   "(labels file found beside it), or an image folder (one sub-folder per class)."),
    out: Path = typer.Option(..., "--out", "-o", parser=_out_dir, metavar="DIR", show_default=False,
                             help="Output folder: report.html, results.json, regions/ (grids + labels.csv), "
                                  "generator.pt."),
    calibration: Path | None = typer.Option(None, "--calibration", "-c", show_default=False, metavar="CAL",
                                            help="Held-out labelled data (same formats): calibrators, the risk "
                                                 "threshold, Defuse seeds, detector reference."),
    train: Path | None = typer.Option(None, "--train", show_default=False, metavar="TRAIN",
                                      help="The model's training data (same formats): Defuse's generator and "
                                           "fine-tuning. Without it Defuse is skipped."),
    groups: Path | None = typer.Option(None, "--groups", "-g", show_default=False, metavar="GROUPS",
                                       help="Slices of the test set: CSV (one column per slicing) or .npz."),
    baseline: Path | None = typer.Option(None, "--baseline", "-b", show_default=False, metavar="MODEL",
                                         help="Another model to compare with slice by slice (flags hidden "
                                              "regressions)."),
    ood: Path | None = typer.Option(None, "--ood", show_default=False, metavar="OOD",
                                    help="Out-of-distribution images (default: generated shapes and noise)."),
    labels: Path | None = typer.Option(None, "--labels", show_default=False, metavar="labels.csv",
                                       help="Filled-in Defuse labels from a first audit: fine-tunes the model on the "
                                            "labelled regions and verifies the fix (needs --force to reuse --out)."),
    steps: str = typer.Option(",".join(("reliability", "robustness", "adversarial", "defuse", "slices")), "--steps",
                              help="Comma-separated steps to run."),
    max_risk: float = typer.Option(0.02, "--max-risk", help="Largest acceptable error rate on answered inputs."),
    severities: str = typer.Option("1,3,5", "--severities", help="Comma-separated shift severities in 1..5."),
    shifts: str | None = typer.Option(None, "--shifts", show_default=False,
                                      help="Comma-separated shift names (default: every corruption and cue shift)."),
    image_size: str | None = typer.Option(None, "--image-size", show_default=False, metavar="HxW",
                                          help="Resize image-folder images to this size (e.g. 32x32)."),
    db: str | None = typer.Option(None, "--db", show_default=False,
                                  help="Run store: a SQLite file or an SQLAlchemy URL (postgresql://...). Default: "
                                       "$FAILSIGHT_DB, else failsight-runs.db beside --out."),
    record: bool = typer.Option(True, "--record/--no-record", help="Record the run in the run store."),
    name: str | None = typer.Option(None, "--name", show_default=False, help="Name of the run in the store."),
    db_force: bool = typer.Option(False, "--db-force", help="Record in a database that already holds other "
                                                              "applications' tables (refused by default)."),
    conformal_alpha: float | None = typer.Option(
        None, "--conformal-alpha", show_default=False, metavar="ALPHA",
        help="Prediction sets miss the true class on at most this share of inputs (default 0.1: 90% coverage)."),
    conformal_method: str | None = typer.Option(
        None, "--conformal-method", show_default=False, metavar="lac|aps|raps",
        help="Conformal score: lac (smallest sets), aps (default; adaptive sets), raps (aps with a size penalty)."),
    class_conditional: bool = typer.Option(False, "--class-conditional",
                                           help="Guarantee the coverage within every class, not only on average."),
    attack_eps: str | None = typer.Option(
        None, "--attack-eps", show_default=False, metavar="E1,E2,...",
        help="Attack budgets for the robust-accuracy curve, in input units (default L-inf 0.01,0.02,0.05,0.1; "
             "L2: those times sqrt(pixels))."),
    attack_norm: str | None = typer.Option(None, "--attack-norm", show_default=False, metavar="linf|l2",
                                           help="Norm of the attack budget (default linf)."),
    attack_method: str | None = typer.Option(None, "--attack-method", show_default=False,
                                             metavar="apgd-ce|pgd|fgsm", help="Attack (default apgd-ce)."),
    attack_steps: int | None = typer.Option(None, "--attack-steps", show_default=False, metavar="N",
                                            help="Attack iterations (default 10; 100 for a thorough evaluation)."),
    attack_restarts: int | None = typer.Option(None, "--attack-restarts", show_default=False, metavar="N",
                                               help="Random restarts on the images not yet broken (default 1)."),
    attack_n: int | None = typer.Option(None, "--attack-n", show_default=False, metavar="N",
                                        help="Test images attacked (default 500, a seeded subset)."),
    attack_bounds: str | None = typer.Option(
        None, "--attack-bounds", show_default=False, metavar="LOW,HIGH",
        help="The model's valid input range; adversarial images stay inside it (default 0,1)."),
    seed: int = typer.Option(0, "--seed", help="Seed of every random step."),
    workers: int | None = typer.Option(None, "--workers", show_default=False, min=1,
                                       help="Parallel workers of the shift sweep (default: every core)."),
    backend: str = typer.Option("local", "--backend", help="Where the sweep runs: local or ray."),
    ray_address: str | None = typer.Option(None, "--ray-address", show_default=False, envvar="RAY_ADDRESS",
                                           help="Ray cluster address (default $RAY_ADDRESS; without one a "
                                                "local cluster is started). Needs --backend ray."),
    force: bool = typer.Option(False, "--force", "-f", help="Reuse an existing --out (overwrites its files)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress (bar in a terminal, log lines otherwise)."),
) -> None:
    """Audit a model on your data with every pillar the inputs allow, and record the run.

    Reliability (calibration with intervals, calibrators, a risk-guaranteed threshold), robustness (corruptions
    and shifts, detection, OOD), Defuse (misclassification regions to label; with --labels, the fix and its
    check) and per-slice accuracy (with --baseline, hidden regressions). Steps that cannot run with what was
    given are skipped with the reason in the report.

    Example: failsight audit --model cnn.pt --test test.npz --calibration val.npz --train train.npz --out audit
    """
    from failsight._validate import FailsightInputError
    from failsight.auditing import audit as run_audit
    from failsight.auditing.core import REPORT_NAME, RESULTS_NAME
    from failsight.datasets.io import load_data
    from failsight.slices import load_groups

    progress = not quiet  # a bar in a terminal, plain log lines on stderr otherwise
    try:  # every argument is checked before the model is loaded
        # a second audit in the same folder would overwrite the first one's Defuse files too
        _check_out(out, (REPORT_NAME, RESULTS_NAME, "generator.pt", "fixed_model.pt", "regions/labels.csv",
                         "regions/regions.npz"), force)
        if backend not in ("local", "ray"):
            raise FailsightInputError(f"--backend must be 'local' or 'ray', not {backend!r}.")
        store = _check_db(db, out, record=record, name=name, db_force=db_force)
        group_arrays = load_groups(groups) if groups is not None else None
        if labels is not None and not labels.is_file():
            raise FailsightInputError(f"labels file {labels} does not exist; run the audit without --labels first, "
                                      "fill in OUT/regions/labels.csv, then pass it.")
        size = _image_size(image_size)
        step_list = [s.strip() for s in steps.split(",") if s.strip()]
        sev = _int_list(severities, "--severities")
        conformal_opts = _conformal_options(conformal_alpha, conformal_method, class_conditional, step_list)
        adversarial_opts = _adversarial_options(attack_eps, attack_norm, attack_method, attack_steps,
                                                attack_restarts, attack_n, attack_bounds, step_list)
        net = _open_model(model, weights, model_args)
        base = _open_model(baseline) if baseline is not None else None

        def read(p: Path | None, what: str, need_labels: bool = True) -> Any:
            return None if p is None else load_data(p, what=what, require_labels=need_labels, image_size=size)

        generator = regions = None
        if labels is not None:  # the generator and regions the labels file was written for
            generator = out / "generator.pt" if (out / "generator.pt").is_file() else None
            regions = out / "regions" / "regions.npz" if (out / "regions" / "regions.npz").is_file() else None
        res = run_audit(net, read(test, "test"), calibration=read(calibration, "calibration"),
                        train=read(train, "train"), groups=group_arrays, baseline=base, ood=read(ood, "ood", False),
                        steps=step_list, seed=seed, max_risk=max_risk, severities=sev, labels=labels,
                        shifts=None if shifts is None else [s.strip() for s in shifts.split(",") if s.strip()],
                        generator=generator, regions=regions, progress=progress, workers=workers,
                        backend=backend, ray_address=ray_address if backend == "ray" else None,
                        conformal_options=conformal_opts, adversarial_options=adversarial_opts)
        paths = res.write(out, force=force)  # files first: a recorded run always has its report
        run = None if store is None else res.record(store, name=name, report_path=str(paths["report"].resolve()),
                                                    allow_foreign=db_force)
    except (FailsightInputError, OSError) as exc:
        _fail(exc)
        return
    typer.echo(res.summary())
    if "labels" in paths:
        typer.echo(f"Label the Defuse regions in {paths['labels'].resolve()} (a class or 'discard' per row), then "
                   "rerun with --labels that file --force to fix and verify.")
    if run is not None:
        typer.echo(f"recorded as run {run.id} in {store} (failsight runs list / compare).")
    typer.echo(f"done in {res.seconds:.0f} s. Report: {paths['report'].resolve()}")


def _conformal_options(alpha: float | None, method: str | None, class_conditional: bool,
                       steps: list[str]) -> dict[str, Any] | None:
    """The audit's ``conformal_options`` from ``--conformal-*``, checked (sets are part of the reliability step)."""
    from failsight._validate import FailsightInputError
    from failsight.reliability.conformal import CONFORMAL_METHODS

    given = {k: v for k, v in (("alpha", alpha), ("method", method)) if v is not None}
    if class_conditional:
        given["class_conditional"] = True
    if not given:
        return None
    _requires(True, "--conformal-alpha/--conformal-method/--class-conditional", "the reliability step in --steps",
              "reliability" in steps)
    if alpha is not None:
        _check_level(alpha, "--conformal-alpha")
    if method is not None:
        given["method"] = method.strip().lower()
        if given["method"] not in CONFORMAL_METHODS:
            raise FailsightInputError(f"--conformal-method must be one of {', '.join(CONFORMAL_METHODS)}; "
                                      f"got {method!r}.")
    return given


def _adversarial_options(eps: str | None, norm: str | None, method: str | None, steps_n: int | None,
                         restarts: int | None, n: int | None, bounds: str | None,
                         steps: list[str]) -> dict[str, Any] | None:
    """The audit's ``adversarial_options`` from ``--attack-*``, checked before any work."""
    from failsight._validate import FailsightInputError
    from failsight.robustness.adversarial import _check_eps, _check_method

    opts: dict[str, Any] = {}
    if method is not None or norm is not None:
        m, nm = _check_method(method or "apgd-ce", norm or "linf")
        if method is not None:
            opts["method"] = m
        if norm is not None:
            opts["norm"] = nm
    if eps is not None:
        parts = [t.strip() for t in eps.split(",") if t.strip()]
        if not parts:
            raise FailsightInputError(f"--attack-eps must be comma-separated budgets such as 0.01,0.05; got {eps!r}.")
        opts["eps"] = tuple(sorted({_check_eps(t, "--attack-eps") for t in parts}))
    for option, key, value in (("--attack-steps", "steps", steps_n), ("--attack-restarts", "restarts", restarts),
                               ("--attack-n", "n", n)):
        if value is not None:
            if value < 1:
                raise FailsightInputError(f"{option} must be a whole number >= 1; got {value}.")
            opts[key] = value
    if bounds is not None:
        try:
            lo, hi = (float(t) for t in bounds.split(","))
        except ValueError:
            raise FailsightInputError(f"--attack-bounds must be LOW,HIGH such as 0,1 (or -1,1); got {bounds!r}."
                                      ) from None
        if not (lo < hi and all(abs(v) < float("inf") for v in (lo, hi))):
            raise FailsightInputError(f"--attack-bounds must be finite with LOW < HIGH; got {bounds!r}.")
        opts["bounds"] = (lo, hi)
    if not opts:
        return None
    _requires(True, "--attack-*", "the adversarial step in --steps", "adversarial" in steps)
    return opts


def _image_size(text: str | None) -> tuple[int, int] | None:
    """Parse "32x32" (or "32") into (32, 32)."""
    from failsight._validate import FailsightInputError

    if text is None:
        return None
    parts = text.lower().replace("×", "x").split("x")
    try:
        hw = tuple(int(p) for p in parts)
    except ValueError:
        raise FailsightInputError(f"--image-size must look like 32x32, got {text!r}.") from None
    if len(hw) == 1:
        hw = (hw[0], hw[0])
    if len(hw) != 2 or min(hw) < 1:
        raise FailsightInputError(f"--image-size must look like 32x32, got {text!r}.")
    return hw  # type: ignore[return-value]


@app.command(short_help="Shapes x colours ablation study: per-slice learning curves and regression flags.")
def study(
    name: str = typer.Argument("shapes-colors", help="Study to run (only 'shapes-colors' for now)."),
    grid: str = typer.Option("default", "--grid", help="Preset: 'default' (minutes), 'demo' (~35 s) or 'small' (seconds)."),
    seeds: str | None = typer.Option(None, "--seeds", show_default=False,
                                     help="Comma-separated seeds (default: the preset's)."),
    epochs: int | None = typer.Option(None, "--epochs", show_default=False, help="Override the preset's epochs."),
    out: Path = typer.Option(Path("failsight-study"), "--out", "-o", parser=_out_dir, metavar="DIR",
                             help="Output folder."),
    force: bool = typer.Option(False, "--force", "-f", help="Overwrite an existing report in --out."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress (bar in a terminal, log lines otherwise)."),
) -> None:
    """Train a compositional network and its ablations (frozen embeddings, no attention, both) over
    seeds on generated shapes x colours images; report shape / colour / object / zero-shot accuracy and
    shape bias per epoch, and whether each ablation hides a regression on some slice."""
    from failsight._validate import FailsightInputError
    from failsight.report.html import Report, write_json
    from failsight.study import run_study
    from failsight.study.report import study_section

    try:
        if name != "shapes-colors":
            raise FailsightInputError(f"unknown study {name!r}; available: shapes-colors.")
        report_path, results_path = _check_out(out, ("report.html", "results.json"), force)
        seed_list = None if seeds is None else [int(s) for s in seeds.split(",") if s.strip()]
        res = run_study(grid, seeds=seed_list, epochs=epochs, progress=not quiet)
        Report(title="failsight study: shapes × colours").add(study_section(res)).write(report_path, force=force)
        write_json(results_path, {"failsight_version": __version__, "study": res}, force=force)
    except (FailsightInputError, ValueError, OSError) as exc:
        _fail(exc)
        return
    typer.echo(f"done in {res.seconds / 60:.1f} min. Report: {report_path.resolve()}")


_mount_runs()


def _mount_monitor() -> None:
    from failsight.monitor.cli import monitor_command

    app.command(name="monitor", short_help="Monitor a deployed model: accuracy without labels, drift, alerts.")(
        monitor_command)


_mount_monitor()
