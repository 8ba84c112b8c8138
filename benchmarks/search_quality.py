"""Does search pay? The default digits study against a uniform-sparsity sweep, at equal FLOPs.

Runs the README's main job (``examples/digits.yaml``: NSGA-II, its default budget) and, on the
same task and storage, the ``uniform`` strategy (every group at the same sparsity, swept over a
grid) with the same fine-tuning, then compares:

* for each uniform trial, the best accuracy the searched study reached at no more FLOPs;
* the 2-D hypervolume of both fronts (accuracy × FLOPs reduction, reference: FLOPs 1.0 and the
  lowest accuracy either study saw);
* the search's wall time against the 3-minute target, and whether any searched trial reaches
  ≥ 50 % FLOPs reduction within 1 accuracy point.

Then every strategy runs on the same task with the same trial budget (``--strategies``, default
``random,tpe,simulated_annealing,netadapt,joint,bitwidth,admm,autocompress``; the spec's own strategy is the row
of the main job, and ``uniform`` sweeps that many grid points): hypervolume of its (accuracy, FLOPs) front
against one common reference, the best accuracy at ≤ 50 % and ≤ 25 % FLOPs (and at ≤ 25 % / ≤ 15 % size, where
bit-widths count), trials used and wall time. Simulated annealing, NetAdapt, ``admm`` and ``autocompress`` aim
at one FLOPs target each run: they run once per target of ``--targets`` (default 50 % and 25 %); annealing's
cooling is set to last the whole budget; NetAdapt sizes its steps to it (``step: auto``) and ends with its
long-term fine-tune (3× the task's fine-tuning; a control re-trains uniform's best plan as long);
``autocompress`` splits the budget into 3 rounds, and both ADMM strategies run
ADMM for one epoch at lr 0.01 before the task's fine-tune; ``joint`` adds ``bits_w: [2, 4, 8, 32]`` to the space
and size to the objectives and runs twice, aimed like the others: with a 50 % FLOPs budget (``joint @0.5``) and
with a 0.15× size budget (``joint @0.15 size``; proposals over a budget are repaired); ``bitwidth`` searches
``bits_w: [2, 4, 8, 32]`` with objectives (accuracy, size).

*Against uniform.* The automatic strategies — annealing, NetAdapt, ADMM, AutoCompress, ``joint`` and
``bitwidth``; ``random``, ``tpe`` and ``nsga2`` are the generic baselines, listed but not judged — are each
judged where they aim: a run at FLOPs target ``t`` (``joint @0.5`` included) at ≤ ``t`` FLOPs, ``joint @0.15
size`` and ``bitwidth`` (prunes nothing) at ≤ 15 % size; the size target is judged on ``joint @0.15 size``. It beats ``uniform`` when its best trial there dominates uniform's best trial
there: more accuracy, or as much with less of the bounded resource.

*Re-evaluated.* One validation run is noisy (360 digits: one sample is 0.28 points) and the best of many trials
is the luckiest of them, so each judged trial, and uniform's best trial where it is judged, is compressed and
fine-tuned again ``--seeds`` times (default 5) with fresh fine-tune seeds, and the verdict is repeated on the
mean accuracies.

*Variants.* ``name:variant`` in ``--strategies`` runs a strategy's earlier, non-default way beside its default (the
paper's): ``netadapt:greedy`` (``inherit_weights: false``), ``autocompress:admm`` (``proposals: admm``) and
``simulated_annealing:moves1`` (``cooling: moves``, one move per temperature), judged like the rest;
``autocompress:1.5x`` is the default with 1.5× the trial budget (about the wall time of ``autocompress:admm``).

``--finetune-epochs N`` overrides the task's ``finetune_epochs`` (``0``: every trial is judged one-shot, so the
comparison measures the allocation alone, not what fine-tuning recovers); ``--constraints "..."`` replaces the
spec's constraints (``;``-separated, ``""`` for none: one-shot accuracy is far below the spec's 2-point bound).

Usage: ``python benchmarks/search_quality.py [--n-trials N] [--uniform-points N] [--strategies a,b]
[--targets 0.5,0.25] [--seeds 5] [--finetune-epochs N] [--constraints C] [--spec FILE] [--seed S] [--out NAME]``; a reduced check: ``--n-trials 8``.
Results are printed and written to ``benchmarks/results/search_quality.md`` / ``.json`` (``--out NAME`` for
another name).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import time
from pathlib import Path

import pandas as pd

import slimtune
from optuna.trial import TrialState

from slimtune.compressors import trace
from slimtune.compressors.plan import CompressionPlan
from slimtune.compressors.training import run_compressor
from slimtune.trials.cost import parse_constraint
from slimtune.trials.objective import rebase_plan
from slimtune.trials import load_model, trials_table
from slimtune.trials.spec import load_spec

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(os.environ.get("SLIMTUNE_BENCH_RESULTS", Path(__file__).parent / "results"))


def front_2d(df: pd.DataFrame) -> pd.DataFrame:
    """Non-dominated (max accuracy, min flops_rel) rows, sorted by FLOPs."""
    rows = df.sort_values(["flops_rel", "accuracy"], ascending=[True, False])
    keep, best = [], -1.0
    for _, r in rows.iterrows():
        if r["accuracy"] > best:
            keep.append(r)
            best = r["accuracy"]
    return pd.DataFrame(keep, columns=df.columns)


def hypervolume(front: pd.DataFrame, ref_acc: float) -> float:
    """Area dominated by a (max accuracy, min flops_rel) front, up to FLOPs 1.0 and ``ref_acc``.

    Sorted by FLOPs, each front point covers FLOPs from its own value to the next point's.
    """
    pts = front.sort_values("flops_rel")[["flops_rel", "accuracy"]].values.tolist()
    area = 0.0
    for i, (flops, acc) in enumerate(pts):
        nxt = pts[i + 1][0] if i + 1 < len(pts) else 1.0
        area += max(0.0, nxt - flops) * max(0.0, acc - ref_acc)
    return area


AUTOMATIC = ("random", "tpe", "simulated_annealing", "netadapt", "joint", "bitwidth", "admm", "autocompress")
TARGETED = ("simulated_annealing", "netadapt", "admm", "autocompress")  # aim at one FLOPs target: a run per target
SIZE_BOUND = 0.15  # where bitwidth is judged, and joint's size target
JOINT_AIMS = (("flops", 0.5), ("size", SIZE_BOUND))  # joint runs with each budget: judged at <= 50 % FLOPs, at <= 0.15x size
PRUNE_FREE = ("bitwidth",)  # quantizes only: judged on size, not on FLOPs
BASELINES = ("uniform", "random", "tpe", "nsga2")  # generic samplers: listed, not judged against uniform
ADMM_RUN = {"epochs": 1, "lr": 0.01}  # the ADMM phase of admm / autocompress trials
# Earlier (non-default) variants of the faithful strategies, compared side by side with the defaults:
# ``--strategies netadapt,netadapt:greedy`` runs both. A variant's runs are labelled ``name:variant``.
VARIANTS = {
    "netadapt:greedy": {"inherit_weights": False},  # every candidate from the original model (allocation search)
    "autocompress:admm": {"proposals": "admm"},  # a full ADMM and fine-tune for every proposal
    "simulated_annealing:moves1": {"cooling": "moves", "moves_per_temperature": 1},  # cool after every move
    "autocompress:1.5x": {},  # the default with 1.5x the trials: about autocompress:admm's wall time
}
VARIANT_BUDGET = {"autocompress:1.5x": 1.5}  # trial budget factor of a variant


def long_finetune(task) -> dict | None:
    """NetAdapt's long-term fine-tune here: 3× the task's fine-tuning (None when the task trains nothing)."""
    config = task.effective_finetune_config()
    if config.steps is not None:
        return {"steps": 3 * config.steps} if config.steps else None
    return {"epochs": 3 * config.epochs} if config.epochs else None


def strategy_run(
    name: str, kwargs: dict, n_trials: int, target: float | None, long: dict | None = None, resource: str = "flops"
) -> dict:
    """``search`` keyword arguments of one automatic strategy in the comparison."""
    study = f"bench-{name.replace(':', '-')}" + (f"-{target:g}" if target is not None else "") + (f"-{resource}" if resource != "flops" else "")
    variant = VARIANTS.get(name, {})
    name = name.split(":")[0]
    run = {**kwargs, "strategy": name, "n_trials": n_trials, "study_name": study, "progress": False}
    for key in list(run):
        if key not in ("task", "strategy", "objectives", "constraints", "n_trials", "timeout", "storage",
                       "study_name", "space", "seed", "save_models", "progress", "weights"):
            del run[key]  # the spec's strategy parameters belong to its own strategy
    space = dict(kwargs.get("space") or {})
    if name == "simulated_annealing":
        start, stop = 0.05, 0.002
        run.update(target=target, start_temperature=start, stop_temperature=stop,
                   cool_down_rate=(stop / start) ** (1.0 / max(n_trials - 0.5, 0.5)))
    elif name == "netadapt":
        run.update(target=target, step="auto", long_term_finetune=long)  # steps sized to reach the target in the budget
    elif name == "admm":
        run.update(target=target, compressor_params=ADMM_RUN)
    elif name == "autocompress":
        # the budget in 3 rounds; by default each round ends with its one ADMM trial
        per_round = n_trials // 3 - (0 if variant.get("proposals") == "admm" else 1)
        run.update(target=target, rounds=3, trials_per_round=max(1, per_round), compressor_params=ADMM_RUN)
    elif name == "joint":
        space["bits_w"] = [2, 4, 8, 32]
        run["objectives"] = ("accuracy", "flops", "size")  # bit-widths move size, sparsity both
        if target is not None:
            run.update(resource=resource, target=target)  # aimed like the targeted strategies
    elif name == "bitwidth":
        space["bits_w"] = [2, 4, 8, 32]
        run["objectives"] = ("accuracy", "size")
    run["space"] = space
    run.update(variant)
    return run


def best_row(table: pd.DataFrame, column: str, bound: float) -> pd.Series | None:
    """The trial with the best accuracy among those with ``column <= bound`` (the least ``column``
    among equals), or None."""
    rows = table[table[column] <= bound + 1e-9]
    if rows.empty:
        return None
    return rows.sort_values(["accuracy", column], ascending=[False, True]).iloc[0]


def best_at(table: pd.DataFrame, column: str, bound: float) -> tuple[float, float]:
    """Best accuracy among the trials with ``column <= bound``, and the least ``column`` at it (NaNs if none)."""
    row = best_row(table, column, bound)
    return (float("nan"), float("nan")) if row is None else (float(row["accuracy"]), float(row[column]))


def reevaluate(task, study, number: int, seeds: list[int]) -> list[float]:
    """Trial ``number``'s plan compressed and fine-tuned again as the trial was (its compressor, its
    fine-tune overrides, from its base model), once per fine-tune seed: its accuracy free of the
    luck of the one seed it was selected on."""
    plan = CompressionPlan.from_dict(study.trials[number].user_attrs["plan"])
    start, graph = task.model, None
    if plan.init_from_trial is not None:  # autocompress: from an earlier round's saved model
        start = load_model(study, plan.init_from_trial).eval()
        graph = trace(start, task.example_inputs)
        plan = rebase_plan(plan, trace(task.model, task.example_inputs), graph)
    accuracies = []
    for seed in seeds:
        overrides = {**(plan.finetune or {}), "seed": seed}
        model = run_compressor(start, plan, task.example_inputs, task.training_context(overrides, None, graph))
        task.run_finetune(model, None, overrides)
        accuracies.append(float(task.evaluate(model)))
    return accuracies


def aim(row: dict) -> tuple[str, float, str]:
    """Where a strategy is judged: (column, bound, resource name)."""
    if row["strategy"].split(" ")[0] in PRUNE_FREE:
        return "size_rel", SIZE_BOUND, "size"
    if row.get("resource") == "size":
        return "size_rel", row["target"], "size"
    return "flops_rel", (row["target"] if row["target"] is not None else 0.5), "FLOPs"


def strategy_row(
    name: str, study, seconds: float, ref: float, constraints: list, target: float | None = None, resource: str | None = None
) -> dict:
    """Hypervolume of the feasible (accuracy, FLOPs) front (the spec's constraints judge every study
    alike), best accuracy at FLOPs / size bounds, trials used, wall time and why the study ended."""
    done = [(t.number, t.user_attrs["measures"]) for t in study.get_trials(states=(TrialState.COMPLETE,))]
    table = pd.DataFrame(
        [{"trial": n, "accuracy": m["accuracy"], "flops_rel": m["flops"], "size_rel": m["size"],
          "feasible": all(c.value(m) <= 0 for c in constraints)} for n, m in done],
        columns=["trial", "accuracy", "flops_rel", "size_rel", "feasible"],
    )  # fmt: skip
    ok = table[table["feasible"]]

    n_trials = study.user_attrs.get("n_trials") or 0
    reason = (study.user_attrs.get("netadapt.result") or study.user_attrs.get("autocompress.result") or {}).get("reason")
    return {
        "strategy": name,
        "target": target,
        "resource": resource,
        "trials": len(table),
        "seconds": seconds,
        "hypervolume": hypervolume(front_2d(ok), ref) if not ok.empty else 0.0,
        **dict(zip(("best_acc_flops_le_50", "flops_at_best_le_50"), best_at(table, "flops_rel", 0.5))),
        **dict(zip(("best_acc_flops_le_25", "flops_at_best_le_25"), best_at(table, "flops_rel", 0.25))),
        "best_acc_size_le_25": best_at(table, "size_rel", 0.25)[0],
        **dict(zip(("best_acc_size_le_15", "size_at_best_le_15"), best_at(table, "size_rel", SIZE_BOUND))),
        "best_acc": float(table["accuracy"].max()) if not table.empty else float("nan"),
        "ended": "budget" if len(study.trials) >= n_trials else (reason or "strategy finished"),
        "table": table,  # the feasible and infeasible trials, for the verdicts (not written out)
    }


def judge(row: dict, uniform: dict, again: dict[tuple[str, int], list[float]] | None = None) -> dict:
    """Does ``row``'s strategy beat ``uniform`` where it aims? Its best trial there must dominate
    uniform's best trial there: more accuracy, or as much with less of the bounded resource. With
    ``again`` (re-evaluations by (strategy, trial)), the same on the mean re-evaluated accuracies."""
    name = row["strategy"].split(" ")[0]
    column, bound, what = aim(row)
    where = f"≤ {bound:g}× {what}"
    mine, theirs = best_row(row["table"], column, bound), best_row(uniform["table"], column, bound)

    def compare(acc: float, u_acc: float) -> tuple[bool, str]:
        res, u_res = float(mine[column]), float(theirs[column]) if theirs is not None else float("nan")
        if theirs is None:
            return True, f"{acc:.4f}, uniform has no trial there"
        if acc > u_acc + 1e-12:
            return True, f"{acc:.4f} > {u_acc:.4f}"
        if acc >= u_acc - 1e-12 and res < u_res - 1e-9:
            return True, f"{acc:.4f} at {res:.3f}× {what} against {u_res:.3f}×"
        return False, f"{acc:.4f} at {res:.3f}× against {u_acc:.4f} at {u_res:.3f}×"

    out = {"strategy": row["strategy"], "judged_at": where, "judged": name not in BASELINES}
    if mine is None:
        return {**out, "beats_uniform": False, "why": f"no trial at {where}"}
    u_acc = float(theirs["accuracy"]) if theirs is not None else float("nan")
    out["beats_uniform"], out["why"] = compare(float(mine["accuracy"]), u_acc)
    out["trial"], out["uniform_trial"] = int(mine["trial"]), (int(theirs["trial"]) if theirs is not None else None)
    if again is not None and (row["strategy"], out["trial"]) in again:
        accs = again[(row["strategy"], out["trial"])]
        u_accs = again.get(("uniform", out["uniform_trial"]), [float("nan")])
        out["reevaluated"], out["uniform_reevaluated"] = accs, u_accs
        beats, why = compare(sum(accs) / len(accs), sum(u_accs) / len(u_accs))
        out["beats_uniform_reevaluated"], out["why_reevaluated"] = beats, "mean " + why
    return out


def long_finetune_control(task, kwargs: dict, uniform, bound: float) -> dict:
    """Uniform's best plan at ≤ ``bound`` FLOPs again, with NetAdapt's long-term fine-tune: how much of
    NetAdapt's final accuracy the longer training alone would give."""
    done = [t for t in uniform.get_trials(states=(TrialState.COMPLETE,)) if t.user_attrs["measures"]["flops"] <= bound + 1e-9]
    if not done:
        return {"bound": bound, "uniform_trial": None}
    best = max(done, key=lambda t: (t.user_attrs["measures"]["accuracy"], -t.user_attrs["measures"]["flops"]))
    sparsity = float(next(iter(best.params.values())))
    long = long_finetune(task)
    again = slimtune.search(
        dataclasses.replace(task, finetune_config=task.effective_finetune_config(long)),
        strategy="uniform", objectives=("accuracy", "flops"), n_trials=1, storage=kwargs.get("storage"),
        study_name=f"uniform-long-{bound:g}", space=kwargs.get("space"), progress=False, low=sparsity, high=sparsity,
    )
    m = again.trials[0].user_attrs.get("measures") or {}
    return {"bound": bound, "uniform_trial": best.number, "flops": best.user_attrs["measures"]["flops"],
            "accuracy": best.user_attrs["measures"]["accuracy"], "long_finetune": long,
            "accuracy_long": m.get("accuracy", float("nan"))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default=str(ROOT / "examples" / "digits.yaml"))
    parser.add_argument("--uniform-points", type=int, default=None, help="grid points of uniform (default: the trial budget)")
    parser.add_argument("--n-trials", type=int, default=None, help="trial budget of every study (default: the spec's)")
    parser.add_argument("--strategies", default=",".join(AUTOMATIC), help="automatic strategies to compare ('' for none)")
    parser.add_argument("--targets", default="0.5,0.25",
                        help="FLOPs targets of simulated_annealing, netadapt, admm and autocompress: one run each (default 0.5,0.25)")
    parser.add_argument("--finetune-epochs", type=int, default=None,
                        help="override the task's finetune_epochs (0: every trial judged one-shot)")
    parser.add_argument("--seeds", type=int, default=5,
                        help="fresh fine-tune seeds each judged trial (and uniform's) is re-evaluated with (0: none)")
    parser.add_argument("--constraints", default=None,
                        help="replace the spec's constraints: ';'-separated, '' for none")
    parser.add_argument("--seed", type=int, default=None, help="override the spec's sampler seed (another search run)")
    parser.add_argument("--out", default="search_quality", help="results file name (without extension)")
    args = parser.parse_args()

    spec = load_spec(args.spec)
    if args.finetune_epochs is not None:
        spec.task_args["finetune_epochs"] = args.finetune_epochs
    with tempfile.TemporaryDirectory() as tmp:
        cwd = os.getcwd()
        os.chdir(tmp)  # the spec's relative sqlite path lands in the temporary directory
        try:
            task = spec.make_task()
            kwargs = spec.search_kwargs()
            if args.constraints is not None:
                kwargs["constraints"] = [c.strip() for c in args.constraints.split(";") if c.strip()]
            if args.n_trials is not None:
                kwargs["n_trials"] = args.n_trials
            if args.seed is not None:
                kwargs["seed"] = args.seed
            t0 = time.perf_counter()
            searched = slimtune.search(task, **{**kwargs, "progress": False})
            search_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            uniform = slimtune.search(
                task,
                strategy="uniform",
                objectives=kwargs.get("objectives", ("accuracy", "flops")),
                n_trials=args.uniform_points or kwargs["n_trials"],
                storage=kwargs.get("storage"),
                study_name="uniform-sweep",
                space=kwargs.get("space"),
                progress=False,
            )
            uniform_s = time.perf_counter() - t0
            baseline = searched.user_attrs["baseline"]
            s_all = trials_table(searched)
            u_all = trials_table(uniform)
            u_measures = [t.user_attrs["measures"] for t in uniform.get_trials(states=(TrialState.COMPLETE,))]
            targets = [float(t) for t in args.targets.split(",") if t.strip()]
            runs = {spec.strategy_name: (searched, search_s, None, None), "uniform": (uniform, uniform_s, None, None)}
            for name in [n for n in args.strategies.split(",") if n and n not in runs]:
                if ":" in name and name not in VARIANTS:
                    raise SystemExit(f"--strategies: unknown variant {name!r}; known: {', '.join(VARIANTS)}")
                base = name.split(":")[0]
                aims = [("flops", t) for t in targets] if base in TARGETED else JOINT_AIMS if base == "joint" else [(None, None)]
                for resource, target in aims:
                    label = name if target is None else f"{name} @{target:g}" + ("" if resource == "flops" else f" {resource}")
                    print(f"{label}: {round(kwargs['n_trials'] * VARIANT_BUDGET.get(name, 1.0))} trials ...", flush=True)
                    t0 = time.perf_counter()
                    n_trials = round(kwargs["n_trials"] * VARIANT_BUDGET.get(name, 1.0))
                    run = strategy_run(name, kwargs, n_trials, target, long_finetune(task), resource or "flops")
                    study = slimtune.search(task, **run)
                    runs[label] = (study, time.perf_counter() - t0, target, resource)
            controls = []
            if any(label.startswith("netadapt") for label in runs) and long_finetune(task):
                controls = [long_finetune_control(task, kwargs, uniform, t) for t in targets]
            constraints = [parse_constraint(c) for c in kwargs.get("constraints") or []]
            common_ref = float(min(trials_table(st)["accuracy"].min() for st, *_ in runs.values() if len(st.trials)))
            strategy_rows = [strategy_row(name, st, sec, common_ref, constraints, tg, res) for name, (st, sec, tg, res) in runs.items()]
            # the selected trials again with fresh fine-tune seeds (not the one they were selected on)
            base_seed = task.effective_finetune_config().seed
            seeds = [base_seed + 1 + i for i in range(args.seeds)]
            again: dict[tuple[str, int], list[float]] = {}
            u_row = next(r for r in strategy_rows if r["strategy"] == "uniform")
            for r in strategy_rows if seeds else []:
                if r["strategy"].split(" ")[0] in BASELINES:
                    continue
                column, bound, _ = aim(r)
                for label, table in ((r["strategy"], r["table"]), ("uniform", u_row["table"])):
                    chosen = best_row(table, column, bound)
                    if chosen is not None and (label, int(chosen["trial"])) not in again:
                        print(f"re-evaluating {label} trial {int(chosen['trial'])} with {len(seeds)} fine-tune seeds ...", flush=True)
                        again[(label, int(chosen["trial"]))] = reevaluate(task, runs[label][0], int(chosen["trial"]), seeds)
        finally:
            os.chdir(cwd)

    # the searched study only keeps trials meeting its constraints: judge the uniform points by them too
    u_all["feasible"] = [
        all(c.value(m) <= 0 for c in constraints) for m in u_measures
    ]
    s_ok = s_all[s_all["feasible"].fillna(True).astype(bool)]
    s_front, u_front = front_2d(s_ok), front_2d(u_all[u_all["feasible"]])
    ref = min(s_all["accuracy"].min(), u_all["accuracy"].min())
    rows = []
    for _, u in u_all.sort_values("flops_rel").iterrows():
        cand = s_ok[s_ok["flops_rel"] <= u["flops_rel"] + 1e-9]
        best = cand["accuracy"].max() if not cand.empty else float("nan")
        rows.append(
            {
                "uniform_flops_rel": u["flops_rel"],
                "uniform_acc": u["accuracy"],
                "uniform_feasible": u["feasible"],
                "search_best_acc_at_le_flops": best,
            }
        )
    cmp = pd.DataFrame(rows)
    cmp["search_wins_or_ties"] = cmp["search_best_acc_at_le_flops"] >= cmp["uniform_acc"]
    feasible_cmp = cmp[cmp["uniform_feasible"]]
    base_acc = baseline["accuracy"]
    goal = s_ok[(s_ok["flops_rel"] <= 0.5) & (s_ok["accuracy"] >= base_acc - 0.01)]
    result = {
        "baseline_accuracy": base_acc,
        "search_trials": len(s_all),
        "search_seconds": search_s,
        "uniform_trials": len(u_all),
        "uniform_seconds": uniform_s,
        "hypervolume_search": hypervolume(s_front, ref),
        "hypervolume_uniform": hypervolume(u_front, ref),
        "feasible_uniform_points_matched_or_beaten": int(feasible_cmp["search_wins_or_ties"].sum()),
        "feasible_uniform_points": len(feasible_cmp),
        "uniform_points": len(cmp),
        "search_reaches_50pct_flops_within_1pt": not goal.empty,
        "search_front": s_front[["trial", "accuracy", "flops_rel", "params_rel"]].to_dict("records"),
        "uniform_front": u_front[["trial", "accuracy", "flops_rel", "params_rel"]].to_dict("records"),
        "strategies_reference_accuracy": common_ref,
        "strategies": [{k: v for k, v in r.items() if k != "table"} for r in strategy_rows],
    }
    # Against uniform, each automatic strategy where it aims (see the module docstring)
    verdicts = [judge(r, u_row, again) for r in strategy_rows if r["strategy"] != "uniform"]
    judged = [v for v in verdicts if v["judged"]]
    joint_rows = sorted((r for r in strategy_rows if r["strategy"].split(" ")[0] == "joint"), key=lambda r: r["resource"] != "size")
    joint_15 = joint_rows[0]["best_acc_size_le_15"] if joint_rows else float("nan")
    result["beats_uniform"] = verdicts
    result["long_finetune_controls"] = controls
    result["all_automatic_beat_uniform"] = all(v["beats_uniform"] for v in judged)
    result["reevaluation_seeds"] = seeds
    result["all_automatic_beat_uniform_reevaluated"] = bool(seeds) and all(v.get("beats_uniform_reevaluated") for v in judged)
    result["joint_best_acc_at_size_le_15"] = joint_15
    result["joint_size_le_15_within_1pt"] = bool(joint_15 == joint_15 and joint_15 >= base_acc - 0.01)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.out}.json").write_text(json.dumps(result, indent=2, default=float))
    strategies_table = pd.DataFrame(strategy_rows).drop(columns=["target", "resource", "table"])
    fmt = lambda v: f"{v:.4f}"  # noqa: E731
    text = "\n".join(
        [
            f"# Search vs uniform pruning on the digits {'ResNet' if spec.task_args.get('arch') == 'resnet' else 'CNN'}",
            "",
            f"Original accuracy {base_acc:.4f}. `slimtune run examples/digits.yaml` ({spec.strategy_name}, "
            f"{len(s_all)} complete trials): **{search_s:.0f} s** (target ≤ 180 s, including the one-time sensitivity "
            f"analysis). Uniform sweep: {len(u_all)} trials, {uniform_s:.0f} s. Fine-tuning of every trial: "
            + (f"{spec.task_args['finetune_epochs']} epochs" if "finetune_epochs" in spec.task_args else "the task's default")
            + (" (none: one-shot accuracy, the allocation alone)." if spec.task_args.get("finetune_epochs") == 0 else "."),
            "",
            f"Hypervolume (accuracy above {ref:.3f} × FLOPs reduction): search **{result['hypervolume_search']:.4f}**, "
            f"uniform {result['hypervolume_uniform']:.4f}.",
            f"Uniform points meeting the study's constraints ({', '.join(c.text for c in constraints) or 'none'}) "
            f"matched or beaten by a searched trial with no more FLOPs: "
            f"**{result['feasible_uniform_points_matched_or_beaten']} / {len(feasible_cmp)}** "
            f"(uniform points in all: {len(cmp)}; below the search's lowest FLOPs they break the constraint).",
            f"A searched trial with ≥ 50 % FLOPs reduction within 1 accuracy point: "
            f"**{'yes' if not goal.empty else 'no'}**"
            + (f" (trial {int(goal.sort_values('flops_rel').iloc[0]['trial'])}: flops_rel "
               f"{goal['flops_rel'].min():.3f})" if not goal.empty else ""),
            "",
            "## Uniform sweep vs search at equal FLOPs",
            "",
            cmp.to_string(index=False, float_format=fmt),
            "",
            "## Search front",
            "",
            s_front[["trial", "accuracy", "flops_rel", "params_rel", "plan"]].to_string(index=False, float_format=fmt),
            "",
            "## Uniform front",
            "",
            u_front[["trial", "accuracy", "flops_rel", "params_rel", "plan"]].to_string(index=False, float_format=fmt),
            "",
            f"## Strategies ({kwargs['n_trials']} trials each; hypervolume above accuracy {common_ref:.3f}; "
            f"simulated_annealing, netadapt, admm and autocompress run once per FLOPs target, `@t`)",
            "",
            strategies_table.to_string(index=False, float_format=fmt),
            "",
            "## Targets",
            "",
            "Automatic strategies against `uniform` where each aims (a run at FLOPs target t at ≤ t FLOPs, "
            f"`joint @0.15 size` and `bitwidth` at ≤ {SIZE_BOUND:g}× size): it beats uniform when its best trial there dominates "
            "uniform's best trial there (more accuracy, or as much with less of that resource): "
            f"**{sum(v['beats_uniform'] for v in judged)} / {len(judged)}**",
            "",
            *(f"- {v['strategy']} ({v['judged_at']}): {'beats' if v['beats_uniform'] else 'does not beat'} uniform, {v['why']}"
              for v in judged),
            "",
            *([
                f"The same trials re-evaluated: each compressed and fine-tuned again with {len(seeds)} fresh fine-tune seeds "
                f"({', '.join(map(str, seeds))}; the trials were selected on seed {base_seed}), mean accuracy: "
                f"**{sum(bool(v.get('beats_uniform_reevaluated')) for v in judged)} / {len(judged)}**",
                "",
                *(f"- {v['strategy']} (trial {v['trial']} against uniform's {v['uniform_trial']}): "
                  f"{'beats' if v['beats_uniform_reevaluated'] else 'does not beat'} uniform, {v['why_reevaluated']} "
                  f"({' '.join(f'{a:.4f}' for a in v['reevaluated'])} against {' '.join(f'{a:.4f}' for a in v['uniform_reevaluated'])})"
                  for v in judged if "reevaluated" in v),
                "",
            ] if seeds else []),
            *([
                "NetAdapt's final trial fine-tunes 3× longer than the others (its long-term fine-tune). Control: "
                + "; ".join(f"uniform's best plan at ≤ {c['bound']:g}× FLOPs (trial {c['uniform_trial']}, {c['flops']:.3f}×) "
                            f"fine-tuned as long: {c['accuracy_long']:.4f} (with the task's fine-tune: {c['accuracy']:.4f})"
                            for c in controls if c.get("uniform_trial") is not None) + ".",
                "",
            ] if controls else []),
            "Generic baselines, not judged: "
            + "; ".join(f"{v['strategy']} ({v['judged_at']}) {'beats' if v['beats_uniform'] else 'does not beat'} "
                        f"uniform, {v['why']}" for v in verdicts if not v["judged"]) + ".",
            "",
            "Some strategy reaches ≥ 50 % FLOPs reduction within 1 accuracy point: **"
            + ("yes" if any(r["best_acc_flops_le_50"] >= base_acc - 0.01 for r in strategy_rows) else "no") + "**; "
            f"`joint` reaches ≤ 0.15× size within 1 point: **{'yes' if result['joint_size_le_15_within_1pt'] else 'no'}** "
            f"(best accuracy at ≤ 0.15× size {joint_15:.4f}, original {base_acc:.4f}).",
            "",
        ]
    )
    (RESULTS / f"{args.out}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
