"""Does search pay? The default digits study against a uniform-sparsity sweep, at equal FLOPs.

Runs the README's main job (``examples/digits.yaml``: NSGA-II, its default budget) and, on the
same task and storage, the ``uniform`` strategy (every group at the same sparsity, swept over a
grid) with the same fine-tuning, then compares:

* for each uniform trial, the best accuracy the searched study reached at no more FLOPs;
* the 2-D hypervolume of both fronts (accuracy × FLOPs reduction, reference: FLOPs 1.0 and the
  lowest accuracy either study saw);
* the search's wall time against the 3-minute target, and whether any searched trial reaches
  ≥ 50 % FLOPs reduction within 1 accuracy point.

Usage: ``python benchmarks/search_quality.py [--uniform-points 12]``. Results are printed and
written to ``benchmarks/results/search_quality.md`` / ``.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import pandas as pd

import slimtune
from optuna.trial import TrialState

from slimtune.trials.cost import parse_constraint
from slimtune.trials.runner import trials_table
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
    return pd.DataFrame(keep)


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default=str(ROOT / "examples" / "digits.yaml"))
    parser.add_argument("--uniform-points", type=int, default=12)
    args = parser.parse_args()

    spec = load_spec(args.spec)
    with tempfile.TemporaryDirectory() as tmp:
        cwd = os.getcwd()
        os.chdir(tmp)  # the spec's relative sqlite path lands in the temporary directory
        try:
            task = spec.make_task()
            kwargs = spec.search_kwargs()
            t0 = time.perf_counter()
            searched = slimtune.search(task, **{**kwargs, "progress": False})
            search_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            uniform = slimtune.search(
                task,
                strategy="uniform",
                objectives=kwargs.get("objectives", ("accuracy", "flops")),
                n_trials=args.uniform_points,
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
        finally:
            os.chdir(cwd)

    # the searched study only keeps trials meeting its constraints: judge the uniform points by them too
    constraints = [parse_constraint(c) for c in kwargs.get("constraints") or []]
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
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "search_quality.json").write_text(json.dumps(result, indent=2, default=float))
    fmt = lambda v: f"{v:.4f}"  # noqa: E731
    text = "\n".join(
        [
            "# Search vs uniform pruning on the digits CNN",
            "",
            f"Original accuracy {base_acc:.4f}. `slimtune run examples/digits.yaml` ({spec.strategy_name}, "
            f"{len(s_all)} complete trials): **{search_s:.0f} s** (target ≤ 180 s, including the one-time sensitivity "
            f"analysis). Uniform sweep: {len(u_all)} trials, {uniform_s:.0f} s.",
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
        ]
    )
    (RESULTS / "search_quality.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
