"""The dashboard in a real browser (Debian's headless Chromium), served by the real server.

What is drawn is read back from the page: plotly's traces and the SVG points it drew.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from dashboard_harness import ARTIFACT_TRIALS, Server
from fake_studies import add_study, fake_measures
from slimtune.trials import open_study, pareto_front, search

PLOTTED = """() => {
  const gd = document.getElementById('pareto-plot');
  const drawn = (uid) => {  // plotly's SVG group of a trace carries the class "trace<uid>"
    const g = gd.querySelector(`.scatterlayer .trace${uid}`);
    return g ? g.querySelectorAll('path.point').length : 0;
  };
  return gd.data.map((t) => ({
    kind: t.meta && t.meta.kind, study: t.meta && t.meta.study, uid: t.uid, drawn: drawn(t.uid),
    x: Array.from(t.x), y: Array.from(t.y), ids: t.customdata ? t.customdata.map((c) => c[1]) : [],
  }));
}"""


def open_pareto(page: Any, server: Server) -> None:
    page.goto(server.url + "#pareto")
    page.wait_for_selector("#pareto-plot[data-ready]")


KINDS = ("dominated", "infeasible", "front")


def plotted(page: Any) -> dict[str, dict[str, Any]]:
    """Per study: its traces by kind (dominated, infeasible, front) as drawn; the original model's
    markers under None."""
    out: dict[Any, dict[str, Any]] = {}
    for t in page.evaluate(PLOTTED):
        out.setdefault(t["study"], {})[t["kind"]] = t
    return out


def drawn(traces: dict[str, Any]) -> int:
    """The points plotly drew for one study."""
    return sum(traces[k]["drawn"] for k in KINDS)


def numbers(traces: dict[str, Any]) -> list[int]:
    """The trial numbers of one study's points."""
    return sorted(n for k in KINDS for n in traces[k]["ids"])


def wait_points(page: Any, study: str, n: int, timeout: float = 20_000) -> None:
    """Wait until ``study``'s traces hold ``n`` points and plotly has drawn all of them."""
    page.wait_for_function(
        f"([study, n]) => ({PLOTTED})().filter((t) => t.study === study)"
        ".every((t, _, all) => all.reduce((k, u) => k + u.x.length, 0) === n && all.reduce((k, u) => k + u.drawn, 0) === n)"
        f" && ({PLOTTED})().some((t) => t.study === study)",
        arg=[study, n],
        timeout=timeout,
    )


def completed(url: str, name: str) -> list[optuna.trial.FrozenTrial]:
    return open_study(url, name).get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def save_screenshot(page: Any, tmp_path: Path, name: str) -> Path:
    """Screenshot into the test's folder (and into $SLIMTUNE_SCREENSHOTS when set, to keep)."""
    path = tmp_path / name
    page.screenshot(path=str(path))
    if os.environ.get("SLIMTUNE_SCREENSHOTS"):
        keep = Path(os.environ["SLIMTUNE_SCREENSHOTS"])
        keep.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(keep / name))
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    return path


def test_pareto_plot_shows_every_completed_trial_and_the_front(page: Any, server: Server, storage_url: str, tmp_path: Path) -> None:
    open_pareto(page, server)
    shown = plotted(page)
    names = [s["name"] for s in server.get("api/studies")[1]["studies"]]
    assert set(shown) - {None} == set(names)  # every study overlaid (none de-selected yet)
    total = 0
    for name in names:
        trials = completed(storage_url, name)
        front = pareto_front(open_study(storage_url, name))["trial"].tolist()
        d = shown[name]
        assert drawn(d) == len(trials), name  # one point per completed trial
        assert numbers(d) == sorted(t.number for t in trials)
        assert d["front"]["drawn"] == len(front) and sorted(d["front"]["ids"]) == sorted(front), name
        infeasible = [t.number for t in trials if any(v > 0 for v in t.user_attrs["constraints"].values())]
        assert sorted(d["infeasible"]["ids"]) == sorted(infeasible) and infeasible
        total += len(trials)
    assert int(page.get_attribute("#pareto-plot", "data-points")) == total
    assert shown[None]["original"]["x"] == [1] and shown[None]["original"]["y"] == [1]  # relative axes
    save_screenshot(page, tmp_path, "pareto.png")

    # any measure on the axes, relative or absolute
    page.select_option("#x-axis", "params")
    page.wait_for_selector('#pareto-plot[data-axes="params,accuracy,rel"]')
    d = plotted(page)["nsga2-a"]
    trials = {t.number: t.user_attrs["measures"] for t in completed(storage_url, "nsga2-a")}
    for kind in KINDS:
        assert d[kind]["x"] == pytest.approx([trials[n]["params"] for n in d[kind]["ids"]])
        assert d[kind]["y"] == pytest.approx([trials[n]["accuracy"] / 0.97 for n in d[kind]["ids"]])
    page.check("input[name=scale][value=abs]")
    page.wait_for_selector('#pareto-plot[data-axes="params,accuracy,abs"]')
    d = plotted(page)
    for kind in KINDS:
        ids = d["nsga2-a"][kind]["ids"]
        assert d["nsga2-a"][kind]["x"] == [trials[n]["params_abs"] for n in ids]
        assert d["nsga2-a"][kind]["y"] == [trials[n]["accuracy"] for n in ids]
    assert d[None]["original"]["x"] == [50_000] and d[None]["original"]["y"] == [0.97]
    page.select_option("#color-axis", "size")  # a third measure as colour: one colour bar
    page.wait_for_function("() => document.querySelectorAll('#pareto-plot .colorbar').length === 1")
    save_screenshot(page, tmp_path, "pareto-params-abs.png")


def test_clicking_a_point_opens_its_trial(page: Any, server: Server, storage_url: str, tmp_path: Path) -> None:
    open_pareto(page, server)
    trace = next(t for t in page.evaluate(PLOTTED) if t["kind"] == "front" and t["study"] == "nsga2-a")
    box = page.locator(f"#pareto-plot .scatterlayer .trace{trace['uid']} path.point").first.bounding_box()
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    number = trace["ids"][0]
    page.wait_for_selector(f'#trial-body[data-ready="nsga2-a/{number}"]')
    assert page.evaluate("location.hash") == f"#trial/nsga2-a/{number}"
    t = open_study(storage_url, "nsga2-a").trials[number]
    assert page.locator("#trial-body h2").inner_text().startswith(f"nsga2-a · trial {number}")
    assert "Pareto front" in page.locator("#trial-body h2").inner_text()
    measures = page.locator("#trial-measures").inner_text()
    assert f"{t.user_attrs['measures']['flops']:.3f}×" in measures
    bars = page.evaluate("() => document.getElementById('plan-sparsity').data[0]")
    assert bars["x"] == list(t.user_attrs["plan"]["prune"]) and bars["y"] == [
        s["sparsity"] for s in t.user_attrs["plan"]["prune"].values()
    ]
    assert page.locator("#plan-sparsity .bars path").count() == len(t.user_attrs["plan"]["prune"])
    save_screenshot(page, tmp_path, "trial.png")

    # a trial with a saved model: download it from the page; the export command is shown
    n = ARTIFACT_TRIALS[0]
    page.evaluate(f"location.hash = '#trial/nsga2-a/{n}'")
    page.wait_for_selector(f'#trial-body[data-ready="nsga2-a/{n}"]')
    with page.expect_download() as info:
        page.click("#trial-download")
    study = open_study(storage_url, "nsga2-a")
    artifact = Path(study.user_attrs["artifacts_dir"]) / study.trials[n].user_attrs["model_artifact"]
    assert Path(info.value.path()).read_bytes() == artifact.read_bytes()
    assert info.value.suggested_filename == f"nsga2-a-trial{n}.safetensors"
    assert page.inner_text("#trial-export").startswith(f"slimtune export --storage {storage_url} --study nsga2-a --trial {n}")

    # a failed trial shows its error; an unknown one says so
    failed = next(t for t in study.trials if t.state == TrialState.FAIL)
    page.evaluate(f"location.hash = '#trial/nsga2-a/{failed.number}'")
    page.wait_for_selector(f'#trial-body[data-ready="nsga2-a/{failed.number}"]')
    assert page.inner_text("#trial-error") == failed.user_attrs["fail_reason"]
    page.evaluate("location.hash = '#trial/nsga2-a/9999'")
    page.wait_for_selector('#trial-body[data-ready="error"]')
    assert "has no trial 9999" in page.inner_text("#trial-body")


def test_studies_progress_and_sensitivity_views(page: Any, server: Server) -> None:
    page.goto(server.url + "#studies")
    page.wait_for_selector("#studies-table tbody tr")
    studies = server.get("api/studies")[1]["studies"]
    rows = page.locator("#studies-table tbody tr")
    assert rows.count() == len(studies)
    row = page.locator('#studies-table tr[data-study="tpe-b"]').inner_text()
    s = next(s for s in studies if s["name"] == "tpe-b")
    assert "tpe" in row and "finished" in row and str(s["counts"]["COMPLETE"]) in row

    page.click("a[data-view=progress]")
    page.wait_for_selector("#progress-plots[data-ready]")
    hv = page.evaluate("() => document.getElementById('progress-hypervolume').data.map((t) => [t.name, t.y[t.y.length - 1]])")
    assert {name: value for name, value in hv} == pytest.approx({s["name"]: s["hypervolume"] for s in studies})
    assert page.locator("#progress-accuracy").count() == 1 and page.locator("#progress-flops").count() == 1

    page.click("a[data-view=sensitivity]")
    page.wait_for_selector("#sens-plot[data-ready]")
    table = next(t for t in server.get("api/sensitivity")[1]["tables"] if t["name"] == page.get_attribute("#sens-plot", "data-ready"))
    heat = page.evaluate("() => document.getElementById('sens-plot').data[0]")
    assert heat["type"] == "heatmap" and heat["z"] == table["drop"] and heat["y"] == table["rows"]
    assert heat["x"] == [f"{round(c * 100)}%" for c in table["columns"]]


def test_a_new_trial_appears_without_reload(page: Any, server: Server, storage_url: str) -> None:
    study = add_study(storage_url, "live", 6, seed=7)
    open_pareto(page, server)
    wait_points(page, "live", 6)
    before = plotted(page)["live"]
    assert drawn(before) == 6
    page.evaluate("window.__notReloaded = true")
    # a trial that dominates every other: the front becomes that one trial
    import random

    measures = fake_measures({"conv1": 0.0, "conv2": 0.0, "conv3": 0.0, "fc1": 0.0}, random.Random(0))
    measures.update(accuracy=0.9699, accuracy_drop=0.0001, flops=0.05, flops_abs=50_000.0)
    study.add_trial(
        optuna.trial.create_trial(
            values=[measures["accuracy"], measures["flops"]],
            user_attrs={"measures": measures, "constraints": {"accuracy_drop <= 0.02": -0.0199}, "plan": {}},
            system_attrs={"constraints": [-0.0199]},
        )
    )
    wait_points(page, "live", 7)
    after = plotted(page)["live"]
    assert after["front"]["ids"] == [6] == pareto_front(open_study(storage_url, "live"))["trial"].tolist()
    assert drawn(after) == 7
    assert page.evaluate("window.__notReloaded") is True


def test_a_running_study_shows_up_live(page: Any, server: Server, storage_url: str) -> None:
    """A real search (the tiny task of tests/_tasks.py) writes into the storage while the page is open."""
    from _tasks import tiny_task

    open_pareto(page, server)
    page.evaluate("window.__notReloaded = true")
    search(
        tiny_task(hidden=16, finetune_steps=5), strategy="random", n_trials=3, storage=storage_url,
        study_name="tiny-live", space={"sensitivity": False, "max_sparsity": 0.75}, save_models="none", progress=False,
    )  # fmt: skip
    n = len(completed(storage_url, "tiny-live"))
    wait_points(page, "tiny-live", n)
    d = plotted(page)["tiny-live"]
    assert drawn(d) == n == 3
    assert sorted(d["front"]["ids"]) == sorted(pareto_front(open_study(storage_url, "tiny-live"))["trial"])
    assert page.evaluate("window.__notReloaded") is True
