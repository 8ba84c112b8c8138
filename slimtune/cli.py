"""The ``slimtune`` command: run searches from a spec file and inspect, export and compare their results.

.. code-block:: text

    slimtune run SPEC [--n-trials N] [--timeout S] [--storage URL] [--study NAME]
                      [--backend local|ray|tune] [--ray-address HOST:PORT] [--max-concurrent-trials N]
    slimtune worker SPEC [same options]       join a running study as one more worker process
    slimtune status [SPEC | --storage URL]    the studies of a storage
    slimtune pareto SPEC | --storage URL --study NAME [--format table|csv|json] [--out FILE]
    slimtune export SPEC | --storage URL --study NAME --trial N --out model.safetensors
    slimtune sensitivity SPEC [--out sensitivity.csv]
    slimtune dashboard [SPEC | --storage URL] [--host 127.0.0.1] [--port 8080]   the live web dashboard
    slimtune report [SPEC | --storage URL] --out report.html                    the same plots in one HTML file

Also ``python -m slimtune ...``. Global options (before or after the command): ``--debug`` (tracebacks
and debug logs), ``-q``/``--quiet`` (no progress bar or per-trial lines), ``--version``.

Errors of slimtune (a bad spec, a missing study, a model that cannot be traced …) print
``slimtune: error: <message>`` on stderr and exit with status 2, without a traceback unless
``--debug`` is given. Ctrl-C exits with status 130; finished trials stay in the study and the same
command resumes it.

Relative ``sqlite:///`` storage paths are relative to the current directory (Optuna's rule), so run
every command of one study from the same directory (or use an absolute path).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slimtune import __version__, attributes
from slimtune.errors import SlimtuneError
from slimtune.trials.spec import Spec, load_spec
from slimtune.trials.storage import DEFAULT_STORAGE, check_exists

if TYPE_CHECKING:
    import optuna
    import pandas as pd

__all__ = ["build_parser", "format_front", "format_legend", "main"]

#: Columns of the Pareto table ``run`` and ``pareto`` print, with their number formats.
TABLE_COLUMNS: dict[str, str] = {
    "trial": "{:d}",
    "accuracy": "{:.4f}",
    "flops_rel": "{:.3f}",
    "params_rel": "{:.3f}",
    "size_bytes": "{:,.0f}",
    "latency_ms": "{:.3f}",
    "plan": "{}",
}

_EPILOG = """\
examples:
  slimtune run examples/digits.yaml              create or resume the study, print its Pareto front
  slimtune worker examples/digits.yaml           one more worker on the same study (another terminal)
  slimtune run examples/digits.yaml --ray-address 127.0.0.1:6379   trials on a running Ray cluster
  slimtune run examples/imagefolder.yaml --workers 2 --devices 0,1   one worker process per GPU
  slimtune worker examples/imagefolder.yaml --device cuda:1          one more worker, on GPU 1
  slimtune status                                studies in ./slimtune.db
  slimtune pareto examples/digits.yaml --format csv --out front.csv
  slimtune export examples/digits.yaml --trial 12 --out small.safetensors
  slimtune sensitivity examples/digits.yaml      per-group metric drop, written to sensitivity.csv
  slimtune dashboard --storage sqlite:///slimtune.db   Pareto fronts in the browser, live (127.0.0.1:8080)

A relative sqlite:/// storage path is relative to the current directory: run every command of a
study from the same directory.
"""

logger = logging.getLogger("slimtune")


# -------------------------------------------------------------------------------------------------
# entry point


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``slimtune`` command with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    restore_logging = _configure_logging(debug=args.debug, quiet=args.quiet)
    try:
        return int(args.handler(args) or 0)
    except SlimtuneError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"slimtune: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "slimtune: interrupted; finished trials are saved in the study (run the same command to resume)",
            file=sys.stderr,
        )
        return 130
    finally:
        restore_logging()


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``slimtune`` and its subcommands."""
    # Global flags are accepted before and after the command: the subcommands' copies default to
    # SUPPRESS so they never overwrite a flag given before the command.
    flags = argparse.ArgumentParser(add_help=False)
    _add_global_flags(flags, default=argparse.SUPPRESS)

    parser = argparse.ArgumentParser(
        prog="slimtune",
        description="AutoML compression of PyTorch models as hyperparameter search (Optuna studies).",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"slimtune {__version__}")
    _add_global_flags(parser, default=False)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(
        name: str, handler: Callable[[argparse.Namespace], int], help: str, description: str
    ) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=description, parents=[flags])
        sub.set_defaults(handler=handler)
        return sub

    run = command(
        "run",
        _cmd_run,
        "create or resume a study and run it",
        "Create the study of SPEC (or resume it: the budget counts the study's finished trials), run "
        "trials until n_trials or timeout, then print the Pareto front.",
    )
    _add_run_options(run)
    run.add_argument(
        "--workers",
        type=_positive_int,
        metavar="N",
        help="run the trials in N local worker processes on the study's storage (default: in this process)",
    )
    run.add_argument(
        "--devices",
        metavar="LIST",
        help="with --workers: the workers' devices, round-robin, e.g. 0,1 (cuda:0, cuda:1) or cpu,cpu "
        "(alone: one worker per device)",
    )

    worker = command(
        "worker",
        _cmd_worker,
        "join a running study as one more worker",
        "Join the study of SPEC, which `slimtune run` must have created, and run trials until the "
        "study has n_trials finished trials (counted over all workers) or timeout passes. Start "
        "several workers for parallel trials; they share the study through its storage.",
    )
    _add_run_options(worker)

    status = command(
        "status",
        _cmd_status,
        "list the studies of a storage",
        "One row per study of the storage (that of SPEC, --storage URL, or sqlite:///slimtune.db): "
        "strategy, objectives, trials by state, Pareto front size and the best trial.",
    )
    status.add_argument("spec", nargs="?", metavar="SPEC", help="a spec file whose storage to list")
    status.add_argument("--storage", metavar="URL", help=f"an Optuna storage URL (default {DEFAULT_STORAGE})")

    pareto = command(
        "pareto",
        _cmd_pareto,
        "print or save the Pareto front of a study",
        "The Pareto front of a study: the best feasible trials for the study's objectives. The table "
        "shows key columns and a legend (the original model's metric and FLOPs, what relative means, the "
        "constraints, the trials not shown and why); csv and json hold every measure and each plan "
        "(json: plan_json as an object).",
    )
    _add_study_options(pareto)
    pareto.add_argument(
        "--format", choices=("table", "csv", "json"), default="table", help="output format (default: table)"
    )
    pareto.add_argument("--out", metavar="FILE", help="write to FILE instead of standard output")

    export = command(
        "export",
        _cmd_export,
        "save the compressed model of a trial",
        "Write the compressed model of a trial (saved when it ran, save_models: all) as a state file: "
        "safetensors weights with the plan and the base model's fingerprint, no pickle; "
        "slimtune.load(FILE, base_model) rebuilds it from the model the study compressed.",
    )
    _add_study_options(export)
    export.add_argument("--trial", type=_non_negative_int, required=True, metavar="N", help="the trial's number")
    export.add_argument(
        "--out", required=True, metavar="FILE", help="where to write the model (e.g. model.safetensors)"
    )
    export.add_argument(
        "--format",
        choices=("state", "onnx", "pt2", "int8", "onnx-int8"),
        help="state: safetensors + plan (slimtune.load); onnx: an ONNX file checked in onnxruntime (a quantized "
        "trial in QDQ form); pt2: a torch.export program (torch.export.load); int8: the PT2E int8 program "
        "(slimtune.compressors.quantization.load_int8), calibrated on the task's calibration batches; onnx-int8: "
        "ONNX Runtime static int8 (QDQ), calibrated likewise; default: from --out's suffix (.onnx, .pt2), else "
        "state",
    )

    sensitivity = command(
        "sensitivity",
        _cmd_sensitivity,
        "per-group pruning sensitivity of the task's model",
        "Prune one group at a time at each level of the space's sensitivity grid and print the metric "
        "drop (rows: groups, columns: sparsity levels); writes the long-form table as CSV. When the "
        "space searches weight bit-widths (space.bits_w), also quantizes one layer at a time at each "
        "of them (rows: layers, columns: bits) and writes that table to <out>-bits.csv. Computed "
        "once per task and storage (cached in the storage), like the searches do.",
    )
    sensitivity.add_argument("spec", metavar="SPEC", help="the spec file (its task, storage and space)")
    sensitivity.add_argument("--storage", metavar="URL", help="an Optuna storage URL (overrides the spec's)")
    sensitivity.add_argument(
        "--device",
        metavar="DEVICE",
        help="where the analysis runs: auto, cpu, cuda, cuda:N or mps (overrides the spec's)",
    )
    sensitivity.add_argument(
        "--out", default="sensitivity.csv", metavar="FILE", help="the CSV to write (default: sensitivity.csv)"
    )
    _add_dashboard_commands(command)
    return parser


def _add_global_flags(parser: argparse.ArgumentParser, default: Any) -> None:
    parser.add_argument("--debug", action="store_true", default=default, help="show tracebacks and debug logs")
    parser.add_argument(
        "-q", "--quiet", action="store_true", default=default, help="no progress bar or per-trial log lines"
    )


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", metavar="SPEC", help="the YAML spec file")
    parser.add_argument("--n-trials", type=_positive_int, metavar="N", help="override the spec's n_trials")
    parser.add_argument("--timeout", type=_positive_float, metavar="SECONDS", help="override the spec's timeout")
    parser.add_argument("--storage", metavar="URL", help="override the spec's storage (an Optuna storage URL)")
    parser.add_argument("--study", metavar="NAME", help="override the spec's study name")
    parser.add_argument(
        "--backend",
        choices=("local", "ray", "tune"),
        help="override the spec's backend: trials in this process, on Ray workers or as Ray Tune trials",
    )
    parser.add_argument(
        "--ray-address",
        metavar="HOST:PORT",
        help="run the trials on this Ray cluster (implies --backend ray; default: the spec's ray.address, "
        "else $RAY_ADDRESS, else a cluster started with `ray start` here, else a local Ray)",
    )
    parser.add_argument(
        "--device",
        metavar="DEVICE",
        help="where the trials run: auto, cpu, cuda, cuda:N or mps (overrides the spec's and the task's device)",
    )
    parser.add_argument(
        "--max-concurrent-trials",
        type=_positive_int,
        metavar="N",
        help="Ray and Tune backends: trials at once, one Ray worker each (default: as many as the cluster holds)",
    )


def _add_dashboard_commands(command: Callable[..., argparse.ArgumentParser]) -> None:
    """``slimtune dashboard`` and ``slimtune report`` (slimtune.dashboard)."""
    dashboard = command(
        "dashboard",
        _cmd_dashboard,
        "serve the web dashboard of a storage's studies",
        "Serve a web page showing the studies of a storage live (it redraws while studies run): studies, "
        "Pareto fronts of any two measures with several studies overlaid, hypervolume and best values over "
        "the trials, each trial's plan, measures and model, the sensitivity tables. It only reads the storage. "
        "Needs the dashboard extra: pip install 'slimtune[dashboard]'.",
    )
    dashboard.add_argument("spec", nargs="?", metavar="SPEC", help="a spec file whose storage to show")
    dashboard.add_argument(
        "--storage", metavar="URL", help=f"an Optuna storage URL (default: the spec's, else {DEFAULT_STORAGE})"
    )
    dashboard.add_argument(
        "--host", default="127.0.0.1", help="the address to listen on (default: 127.0.0.1, this machine only)"
    )
    dashboard.add_argument(
        "--port", type=_int_at_least(0), default=8080, help="the port (default: 8080; 0: any free port)"
    )
    dashboard.add_argument(
        "--poll",
        type=_positive_float,
        default=1.5,
        metavar="SECONDS",
        help="how often the page checks for changes (default: 1.5)",
    )
    report = command(
        "report",
        _cmd_report,
        "write the dashboard's plots into one self-contained HTML file",
        "Write one HTML file holding the dashboard's views of the storage's studies as they are now (plotly.js "
        "included: it opens offline, without slimtune). Needs plotly (pip install 'slimtune[dashboard]').",
    )
    report.add_argument("spec", nargs="?", metavar="SPEC", help="a spec file whose storage to report")
    report.add_argument(
        "--storage", metavar="URL", help=f"an Optuna storage URL (default: the spec's, else {DEFAULT_STORAGE})"
    )
    report.add_argument("--out", required=True, metavar="FILE", help="the HTML file to write (e.g. report.html)")
    report.add_argument(
        "--study", action="append", metavar="NAME", help="include only this study (repeat for several; default: all)"
    )
    report.add_argument(
        "--trials",
        choices=("all", "front", "none"),
        default="all",
        help="which trials get a trial view in the file (default: all; front keeps the file small)",
    )


def _add_study_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", nargs="?", metavar="SPEC", help="a spec file naming the storage and the study")
    parser.add_argument(
        "--storage", metavar="URL", help=f"an Optuna storage URL (default: the spec's, else {DEFAULT_STORAGE})"
    )
    parser.add_argument("--study", metavar="NAME", help="the study's name (default: the spec's)")


# -------------------------------------------------------------------------------------------------
# commands


def _cmd_run(args: argparse.Namespace) -> int:
    from slimtune.trials.results import pareto_front

    spec = _load_run_spec(args)
    if args.workers or args.devices:
        study = _run_workers(spec, args)
    else:
        study = _search(spec, join=False, progress=not args.quiet)
    print(_study_line(study, spec.storage_url, spec.n_trials))
    front = pareto_front(study)
    print(format_front(front) if not front.empty else "the Pareto front is empty: no complete (feasible) trial")
    print(format_legend(study, front))
    reasons = _failure_reasons(study) if front.empty else ""
    if reasons:
        print(reasons)
    if not front.empty and spec.save_models == "all":
        options = [f" --{opt} {_quote(getattr(args, opt))}" for opt in ("storage", "study") if getattr(args, opt)]
        where = "".join(options)
        print(f"\nexport a model: slimtune export {_quote(args.spec)}{where} --trial N --out model.safetensors")
    return 0


def _cmd_worker(args: argparse.Namespace) -> int:
    spec = _load_run_spec(args)
    check_exists(spec.storage_url)
    study = _search(spec, join=True, progress=not args.quiet)
    print(f"worker done; {_study_line(study, spec.storage_url, spec.n_trials)}")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from slimtune.trials.results import studies_summary

    storage = args.storage or (load_spec(args.spec).storage_url if args.spec else DEFAULT_STORAGE)
    check_exists(storage)
    table = studies_summary(storage)
    if table.empty:
        print(f"no studies in {storage}")
        return 0
    if "n_trials" in table.columns:  # the budget of the latest run (attributes.n_trials); "-": none
        table["n_trials"] = [_fmt(v, "{:d}") for v in table["n_trials"]]
    print(f"studies in {storage}:")
    print(table.to_string(index=False))
    print("n_trials: the budget of finished trials the study's latest run asked for")
    return 0


def _cmd_pareto(args: argparse.Namespace) -> int:
    from slimtune.trials.results import pareto_front

    if args.out:
        _check_file_path(args.out, "--out", "front." + ("txt" if args.format == "table" else args.format))
    study = _open_study(args)
    front = pareto_front(study)
    if args.format == "table":
        if not front.empty:
            text = format_front(front)
        elif _n_complete(study):
            text = f"study {study.study_name!r} has no feasible complete trial: its Pareto front is empty"
        else:
            text = f"study {study.study_name!r} has no complete trial yet"
        text += "\n" + format_legend(study, front) + "\n"
    elif args.format == "csv":
        text = front.to_csv(index=False)
    else:
        text = json.dumps(_front_records(front), indent=2) + "\n"
    if args.out:
        _write_text(args.out, text)
        print(f"wrote the Pareto front of study {study.study_name!r} ({len(front)} trials) to {args.out}")
    else:
        sys.stdout.write(text)
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from slimtune.compressors import state
    from slimtune.trials.results import export_model

    _check_file_path(args.out, "--out", "model.safetensors")
    fmt = args.format or {".onnx": "onnx", ".pt2": "pt2"}.get(Path(args.out).suffix.lower(), "state")
    study = _open_study(args)
    if fmt != "state":
        return _export_program(args, study, fmt)
    try:
        path = export_model(study, args.trial, args.out)
    except OSError as exc:
        raise SlimtuneError(f"cannot write {args.out}: {exc.strerror or exc}") from exc
    meta = state.read_metadata(path)
    inputs = ", ".join(f"{x['dtype']}[{', '.join(map(str, x['shape']))}]" for x in meta.get("inputs") or [])
    print(f"exported trial {args.trial} of study {study.study_name!r} to {path} ({path.stat().st_size:,} bytes)")
    print(f"format: {state.FORMAT} (safetensors weights + the plan; no pickle)")
    print(f"inputs: {inputs} (the first dimension is the batch)")
    print(f"base model: {meta.get('base_class')} (fingerprint {meta.get('base', {}).get('architecture')})")
    print(f"load it with: slimtune.load({str(path)!r}, base_model)   # base_model: the model the study compressed")
    return 0


def _export_program(args: argparse.Namespace, study: optuna.Study, fmt: str) -> int:
    """``export --format onnx|pt2|int8|onnx-int8``: rebuild the trial's model from the spec's task, export it,
    check it."""
    from slimtune import devices
    from slimtune.compressors.deploy import export_onnx, export_onnx_int8, export_pt2
    from slimtune.trials.results import load_model

    if not args.spec:
        raise SlimtuneError(
            f"--format {fmt} rebuilds the trial's model from the task's model: give the SPEC file (its task)",
            field="--format",
        )
    task = load_spec(args.spec).make_task()
    model = load_model(study, args.trial, task.model)
    inputs = devices.move(task.example_inputs, "cpu")
    if fmt in ("int8", "onnx-int8"):
        if not task.calibration:
            raise SlimtuneError(
                f"--format {fmt} calibrates activation ranges on the task's calibration batches, and "
                "Task.calibration is empty: give the task calibration=[...] (a few hundred samples)",
                field="Task.calibration",
            )
        if fmt == "int8":
            return _export_int8(args, study, model, inputs, task.calibration)
        result = export_onnx_int8(model, inputs, args.out, task.calibration)
    else:
        export = export_onnx if fmt == "onnx" else export_pt2
        result = export(model, inputs, args.out)
    print(f"exported trial {args.trial} of study {study.study_name!r}")
    print(result)
    return 0


def _export_int8(args: argparse.Namespace, study: optuna.Study, model: Any, inputs: Any, calibration: Any) -> int:
    """``export --format int8``: the default int8 path (PT2E), saved as its program, reloaded and compared."""
    import time

    import torch

    from slimtune.compressors.quantization import export_int8, load_int8, save_int8

    start = time.perf_counter()
    int8 = export_int8(model, inputs, calibration)
    save_int8(int8, args.out, inputs)
    seconds = time.perf_counter() - start
    args_ = inputs if isinstance(inputs, tuple) else (inputs,)
    with torch.no_grad():
        ref = model.eval().cpu()(*args_)
        out = load_int8(args.out)(*args_)
    rel = float((out - ref).norm() / ref.norm()) if isinstance(out, torch.Tensor) else float("nan")
    shapes = ", ".join(f"{a.dtype}[batch, {', '.join(map(str, a.shape[1:]))}]" for a in args_ if hasattr(a, "shape"))
    size = Path(args.out).stat().st_size
    print(f"exported trial {args.trial} of study {study.study_name!r}")
    print(
        f"{args.out}: int8 torch.export program (torchao PT2E, X86InductorQuantizer), {size:,} bytes, {seconds:.1f} s"
    )
    print(f"  inputs: {shapes} (dynamic batch)")
    print(f"  reloaded with slimtune.compressors.quantization.load_int8: relative L2 error {rel:.2%} against fp32")
    return 0


def _cmd_sensitivity(args: argparse.Namespace) -> int:
    from slimtune import devices
    from slimtune.trials.sensitivity import bit_sensitivity_table, sensitivity_table

    _check_file_path(args.out, "--out", "sensitivity.csv")
    spec = load_spec(args.spec, overrides={"storage": args.storage, "device": args.device})
    task = spec.make_task()
    task = task.on_device(devices.resolve(spec.device or task.device, field="device" if spec.device else "Task.device"))
    table = sensitivity_table(task, storage=spec.storage_url, space=spec.space, progress=not args.quiet)
    baseline = table.attrs.get("baseline")
    cached = " (cached in the storage)" if table.attrs.get("cached") else ""
    print(
        f"{task.metric_name} drop when only one group is pruned{cached}; "
        f"original {task.metric_name}: {_fmt(baseline, '{:.4f}')}"
    )
    print(format_sensitivity(table))
    _write_csv(table, args.out)
    if any(b != 32 for b in (spec.space or {}).get("bits_w") or ()):
        bits = bit_sensitivity_table(task, storage=spec.storage_url, space=spec.space, progress=not args.quiet)
        cached = " (cached in the storage)" if bits.attrs.get("cached") else ""
        print(f"\n{task.metric_name} drop when only one layer's weights are quantized{cached}")
        print(format_bit_sensitivity(bits))
        out = Path(args.out)
        _write_csv(bits, str(out.with_name(out.stem + "-bits" + (out.suffix or ".csv"))))
    return 0


def _write_csv(table: pd.DataFrame, path: str) -> None:
    try:
        table.to_csv(path, index=False)
    except OSError as exc:
        raise SlimtuneError(f"cannot write {path}: {exc.strerror or exc}") from exc
    print(f"wrote {path} ({len(table)} rows)")


def _dashboard_storage(args: argparse.Namespace) -> str:
    storage = args.storage or (load_spec(args.spec).storage_url if args.spec else DEFAULT_STORAGE)
    check_exists(storage)
    return storage


def _require(*modules: str) -> None:
    """Fail clearly when the dashboard extra is not installed."""
    import importlib.util

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise SlimtuneError(
            f"this command needs {', '.join(missing)}: install the dashboard extra (pip install 'slimtune[dashboard]')"
        )


def _cmd_dashboard(args: argparse.Namespace) -> int:
    _require("starlette", "uvicorn", "plotly")
    from slimtune.dashboard.app import serve

    serve(_dashboard_storage(args), host=args.host, port=args.port, poll_seconds=args.poll)
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    _require("plotly")
    from slimtune.dashboard.report import write_report

    _check_file_path(args.out, "--out", "report.html")
    storage = _dashboard_storage(args)
    path = write_report(storage, args.out, studies=args.study, details=args.trials)
    size = path.stat().st_size / 1e6
    print(f"wrote the report of {storage} to {path} ({size:.1f} MB; open it in a browser, offline)")
    return 0


# -------------------------------------------------------------------------------------------------
# formatting


def format_front(front: pd.DataFrame) -> str:
    """The key columns of a Pareto front (:data:`TABLE_COLUMNS`) as aligned text.

    ``latency_ms`` is shown only when measured; missing values print as ``-``.
    """
    columns = [c for c in TABLE_COLUMNS if c in front.columns and not (c == "latency_ms" and front[c].isna().all())]
    table = front[columns].copy()
    for column in columns:
        fmt = TABLE_COLUMNS[column]
        table[column] = [_fmt(v, fmt) for v in table[column]]
    if "plan" in table.columns:  # left-align the one text column
        width = max([len("plan"), *(len(v) for v in table["plan"])])
        table["plan"] = [v.ljust(width) for v in table["plan"]]
        table = table.rename(columns={"plan": "plan".ljust(width)})
    return table.to_string(index=False)


def format_sensitivity(table: pd.DataFrame) -> str:
    """A sensitivity table pivoted: one row per group (in the table's order), one column per level."""
    if table.empty:
        return "(no prunable groups)"
    groups = list(dict.fromkeys(table["group"]))
    pivot = table.pivot(index="group", columns="level", values="drop").reindex(groups)
    pivot.columns = [f"{level:.0%}" if round(level * 100, 9).is_integer() else f"{level:g}" for level in pivot.columns]
    if "channels" in table.columns:
        pivot.insert(0, "channels", table.groupby("group")["channels"].first().reindex(groups))
    width = max(len("group"), *(len(g) for g in groups))
    pivot.index = [g.ljust(width) for g in groups]
    pivot.index.name = None
    text = pivot.to_string(float_format=lambda v: f"{v:.4f}")
    return "group".ljust(width) + text[width:]  # the header row's empty index cell


def format_bit_sensitivity(table: pd.DataFrame) -> str:
    """A bit-width sensitivity table pivoted: one row per layer, one column per weight bit-width."""
    if table.empty:
        return "(no quantizable layers)"
    layers = list(dict.fromkeys(table["layer"]))
    pivot = table.pivot(index="layer", columns="bits_w", values="drop").reindex(layers)
    pivot.columns = [f"{int(b)} bits" for b in pivot.columns]
    width = max(len("layer"), *(len(n) for n in layers))
    pivot.index = [n.ljust(width) for n in layers]
    pivot.index.name = None
    text = pivot.to_string(float_format=lambda v: f"{v:.4f}")
    return "layer".ljust(width) + text[width:]


def _front_records(front: pd.DataFrame) -> list[dict[str, Any]]:
    """JSON-ready rows (NaN → null) with each ``plan_json`` parsed into an object."""
    records = json.loads(front.to_json(orient="records", double_precision=15)) if not front.empty else []
    for record in records:
        if isinstance(record.get("plan_json"), str):
            record["plan_json"] = json.loads(record["plan_json"])
    return records


def _study_line(study: optuna.Study, storage: str, n_trials: int | None = None) -> str:
    """The end-of-run summary: the finished trials the budget counts, by state, as the progress bar
    counts them (:func:`slimtune.trials.driver.counts`: a failed trial that was retried after its
    worker died, and a trial asked for after the budget was used, are not counted)."""
    from optuna.trial import TrialState

    from slimtune import optuna_internals
    from slimtune.trials.driver import counts

    trials = study.get_trials(deepcopy=False)
    retried = {optuna_internals.retried_from(t) for t in trials} - {None}
    counted = [t for t in trials if t.state.is_finished() and t.number not in retried and not attributes.over_budget(t)]
    states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    by_state = {s: sum(1 for t in counted if t.state == s) for s in states}
    done = counts(study)["done"]  # == len(counted): the progress bar's count
    line = (
        f"study {study.study_name!r} in {storage}: {by_state[TrialState.COMPLETE]} complete, "
        f"{by_state[TrialState.PRUNED]} pruned, {by_state[TrialState.FAIL]} failed trials"
    )
    line += f" ({done} of {n_trials} finished)" if n_trials is not None else f" ({done} finished)"
    not_counted = [
        f"{n} {what}"
        for n, what in (
            (sum(1 for t in trials if t.number in retried), "failed and retried (worker died)"),
            (sum(1 for t in trials if attributes.over_budget(t)), "over budget (pruned at once)"),
        )
        if n
    ]
    if not_counted:
        line += "; not counted: " + ", ".join(not_counted)
    return line


def _n_complete(study: optuna.Study) -> int:
    """The number of COMPLETE trials of ``study``."""
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))


def format_legend(study: optuna.Study, front: pd.DataFrame) -> str:
    """What the Pareto table shows: the original model, what "relative" means, the study's
    constraints and the trials the table leaves out (and why)."""
    from optuna.trial import TrialState

    base = attributes.baseline(study)
    metric = attributes.metric_name(study)
    direction = attributes.metric_direction(study)
    original = []
    if base.get("accuracy") is not None:
        original.append(f"{metric} {_fmt(base['accuracy'], '{:.4f}')}")
    for key, fmt in (
        ("flops", "{:,.0f} FLOPs (MACs per sample)"),
        ("params", "{:,.0f} params"),
        ("size", "{:,.0f} bytes"),
        ("latency", "latency {:.3f} ms"),
    ):
        if base.get(key) is not None:
            original.append(_fmt(base[key], fmt))
    if base.get("latency") is not None:
        from slimtune.compressors.measures.runtimes import LatencySetting

        setting = LatencySetting.parse(study.user_attrs.get(attributes.Study.LATENCY))
        batch = study.user_attrs.get(attributes.Study.MEASURE_BATCH) or 32
        original[-1] += f" ({setting.with_batch(int(batch)).describe()})"
    lines = [
        "original model: " + (", ".join(original) or "not recorded (a study slimtune did not create)"),
        f"accuracy: the task's metric ({metric}, {'higher' if direction == 'maximize' else 'lower'} is better)",
        "*_rel: relative, the ratio to the original model (1.000 = as large, 0.500 = half); "
        "size_bytes, latency_ms: absolute",
    ]
    constraints = attributes.study_constraints(study)
    lines.append("constraints: " + ("; ".join(constraints) if constraints else "none"))
    shown = set(int(n) for n in front["trial"]) if not front.empty else set()
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.number not in shown]
    infeasible = sum(1 for t in complete if attributes.feasible(t) is False)
    dominated = len(complete) - infeasible
    hidden = [f"{dominated} complete but {'not the best' if len(study.directions) == 1 else 'dominated'}"]
    if constraints:
        hidden.append(f"{infeasible} complete but infeasible")
    for state, what in (
        (TrialState.FAIL, "failed"),
        (TrialState.PRUNED, "pruned"),
        (TrialState.RUNNING, "running"),
        (TrialState.WAITING, "waiting"),
    ):
        n = sum(1 for t in trials if t.state == state)
        if n or state in (TrialState.FAIL, TrialState.PRUNED):
            hidden.append(f"{n} {what}")
    lines.append(f"not shown: {len(trials) - len(shown)} of {len(trials)} trials ({', '.join(hidden)})")
    return "\n".join(lines)


def _failure_reasons(study: optuna.Study, limit: int = 3) -> str:
    """The most common reasons the study's trials failed, one per line (empty when none failed)."""
    from collections import Counter

    from optuna.trial import TrialState

    failed = study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
    if not failed:
        return ""
    reasons = Counter(str(attributes.fail_reason(t) or "unknown") for t in failed)
    lines = [f"{len(failed)} failed trials; reasons:"]
    lines += [f"  {count} × {reason}" for reason, count in reasons.most_common(limit)]
    return "\n".join(lines)


def _fmt(value: Any, fmt: str) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    try:
        return fmt.format(int(value) if fmt == "{:d}" else value)
    except (TypeError, ValueError):
        return str(value)


def _quote(text: str) -> str:
    import shlex

    return shlex.quote(text)


# -------------------------------------------------------------------------------------------------
# helpers


def _load_run_spec(args: argparse.Namespace) -> Spec:
    spec = load_spec(
        args.spec,
        overrides={
            "n_trials": args.n_trials,
            "timeout": args.timeout,
            "storage": args.storage,
            "study": args.study,
            "backend": args.backend,
            "device": args.device,
        },
    )
    ray = {"address": args.ray_address, "max_concurrent_trials": args.max_concurrent_trials}
    ray = {key: value for key, value in ray.items() if value is not None}
    if ray:
        if args.backend == "local":
            raise SlimtuneError(
                "--ray-address and --max-concurrent-trials apply to the Ray backend, not --backend local"
            )
        from dataclasses import replace

        from slimtune.trials.config import RayOptions

        if spec.backend == "tune":  # the same two options of the Tune backend
            from slimtune.trials.tune_options import TuneOptions

            merged = {**(spec.tune or {}), **ray}
            try:
                TuneOptions.from_dict(merged)
            except ValueError as exc:
                raise SlimtuneError(f"{spec.source}: {exc}") from exc
            return replace(spec, tune=merged, path=spec.path)
        merged = {**(spec.ray or {}), **ray}
        try:
            RayOptions.from_dict(merged)
        except ValueError as exc:
            raise SlimtuneError(f"{spec.source}: {exc}") from exc
        spec = replace(spec, backend="ray", ray=merged, path=spec.path)
    return spec


def _search(spec: Spec, join: bool, progress: bool) -> optuna.Study:
    """Build the spec's task and run (or join) its study.

    A ``ValueError`` from the search is a setting the spec's checks cannot see without the model
    (e.g. ``space.groups`` naming no prunable group); it is reported as an error of the spec file.
    """
    from slimtune.trials.search import run

    config = spec.search_config(join=join, progress=progress)
    task = spec.make_task()
    try:
        return run(task, config)
    except ValueError as exc:
        if isinstance(exc, SlimtuneError):
            raise
        raise SlimtuneError(f"{spec.source}: {exc}") from exc


def _run_workers(spec: Spec, args: argparse.Namespace) -> optuna.Study:
    """``run --workers N --devices LIST``: N local worker processes on the spec's study."""
    from slimtune import devices
    from slimtune.trials.workers import run_workers

    device_list = devices.parse_list(args.devices) if args.devices else None
    if device_list and args.device:
        raise SlimtuneError("give --device (every worker) or --devices (one per worker), not both")
    n_workers = args.workers or len(device_list or ())
    forwarded = []  # the options a worker needs to find the same study with the same budget
    for option, value in (
        ("--storage", args.storage),
        ("--study", args.study),
        ("--n-trials", args.n_trials),
        ("--timeout", args.timeout),
        ("--device", args.device),
    ):
        if value is not None:
            forwarded += [option, str(value)]
    if args.debug:
        forwarded.append("--debug")
    return run_workers(spec, n_workers, device_list, progress=not args.quiet, extra_args=forwarded)


def _open_study(args: argparse.Namespace) -> optuna.Study:
    """The study named by ``SPEC`` and/or ``--storage``/``--study`` (options win over the spec)."""
    from slimtune.trials.storage import open_study

    spec = load_spec(args.spec) if args.spec else None
    storage = args.storage or (spec.storage_url if spec else DEFAULT_STORAGE)
    name = args.study or (spec.study if spec else None)
    if not name:
        raise SlimtuneError(
            f"name the study: give a SPEC file or --study NAME (`slimtune status --storage {storage}` lists them)"
        )
    check_exists(storage)
    return open_study(storage, name)


def _check_file_path(path: str, option: str, name: str) -> None:
    """``path`` names a file to write, not a directory (checked before any work)."""
    if os.path.isdir(path) or path.endswith(("/", os.sep)):
        raise SlimtuneError(
            f"{option} {path}: is a directory; {option} expects a file path, e.g. {os.path.join(path, name)}",
            field=option.lstrip("-"),
        )


def _write_text(path: str, text: str) -> None:
    try:
        out = Path(path)
        if out.parent != Path("."):
            out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise SlimtuneError(f"cannot write {path}: {exc.strerror or exc}") from exc


def _int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer ≥ ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be ≥ {minimum}, got {value}")
        return value

    return parse


_positive_int = _int_at_least(1)
_non_negative_int = _int_at_least(0)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _configure_logging(debug: bool, quiet: bool) -> Callable[[], None]:
    """Show slimtune's log lines (one per finished trial) on stderr; returns a function undoing it."""
    import optuna

    handler = _TqdmHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s" if not debug else "%(levelname)s %(name)s: %(message)s"))
    saved = (logger.level, logger.propagate, optuna.logging.get_verbosity())
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if debug else logging.WARNING if quiet else logging.INFO)
    logger.propagate = False
    # Optuna announces every study it creates at INFO; slimtune prints its own lines.
    optuna.logging.set_verbosity(optuna.logging.DEBUG if debug else optuna.logging.WARNING)

    def restore() -> None:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]
        optuna.logging.set_verbosity(saved[2])

    return restore


class _TqdmHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes log lines through ``tqdm.write`` so they do not break a progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=self.stream)
        except Exception:
            self.handleError(record)
