"""``slimtune report``: one self-contained HTML file with the dashboard's plots, opened offline."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from optuna.trial import TrialState

from dashboard_harness import STUDIES
from slimtune.cli import main
from slimtune.trials import open_study, pareto_front


def test_report_is_self_contained_and_draws_the_same_plots(
    page: Any, storage_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "share" / "report.html"
    assert main(["report", "--storage", storage_url, "--out", str(out)]) == 0
    assert f"wrote the report of {storage_url} to {out}" in capsys.readouterr().out
    html = out.read_text()
    assert not re.search(r"<(script|link)[^>]+(src|href)=", html)  # everything inline, nothing fetched
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto(out.as_uri() + "#pareto")
    page.wait_for_selector("#pareto-plot[data-ready]")
    assert all(u.startswith(("file:", "data:", "blob:")) for u in requests), requests
    assert "report of" in page.inner_text("#live")
    traces = page.evaluate(
        "() => document.getElementById('pareto-plot').data.map((t) => [t.meta.kind, t.meta.study || null, t.customdata ? t.customdata.map((c) => c[1]) : []])"
    )
    for name in STUDIES:
        study = open_study(storage_url, name)
        complete = sorted(t.number for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
        ids = [n for kind, s, numbers in traces if s == name for n in numbers]
        front = [n for kind, s, numbers in traces if s == name and kind == "front" for n in numbers]
        assert sorted(ids) == complete and sorted(front) == sorted(pareto_front(study)["trial"])

    # the trial view works from the file; it shows the export command, not a download
    failed = next(t for t in open_study(storage_url, "nsga2-a").trials if t.state == TrialState.FAIL)
    page.evaluate(f"location.hash = '#trial/nsga2-a/{failed.number}'")
    page.wait_for_selector(f'#trial-body[data-ready="nsga2-a/{failed.number}"]')
    assert page.inner_text("#trial-error") == failed.user_attrs["fail_reason"]
    page.evaluate("location.hash = '#trial/nsga2-a/0'")
    page.wait_for_selector('#trial-body[data-ready="nsga2-a/0"]')
    assert page.locator("#trial-download").count() == 0
    assert page.inner_text("#trial-export").startswith("slimtune export --storage")
    page.click("a[data-view=progress]")
    page.wait_for_selector("#progress-plots[data-ready]")
    page.click("a[data-view=sensitivity]")
    page.wait_for_selector("#sens-plot[data-ready]")


def test_report_options(storage_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    full, small = tmp_path / "full.html", tmp_path / "small.html"
    assert main(["report", "--storage", storage_url, "--out", str(full), "--study", "tpe-b"]) == 0
    assert main(["report", "--storage", storage_url, "--out", str(small), "--study", "tpe-b", "--trials", "front"]) == 0
    text = full.read_text()
    views = re.compile(r'"/api/studies/tpe-b/trials/\d+":')
    study = open_study(storage_url, "tpe-b")
    assert len(views.findall(text)) == len(study.trials) and "/api/studies/nsga2-a" not in text
    assert len(views.findall(small.read_text())) == len(pareto_front(study)) < len(study.trials)
    assert small.stat().st_size < full.stat().st_size
    capsys.readouterr()
    assert main(["report", "--storage", storage_url, "--out", str(tmp_path / "x.html"), "--study", "nobody"]) == 2
    assert "no study 'nobody'" in capsys.readouterr().err and not (tmp_path / "x.html").exists()
