"""The dashboard's JSON API against what the storage holds, served by the real ``slimtune dashboard``."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import quote

import numpy as np
import optuna
import pytest
import torch
from optuna._hypervolume import compute_hypervolume
from optuna.trial import TrialState

import slimtune
from dashboard_harness import ARTIFACT_TRIALS, STUDIES, Server
from fake_studies import fake_base_model
from slimtune.cli import main
from slimtune.dashboard import StorageReader
from slimtune.trials import make_storage, open_study, pareto_front
from slimtune.trials.sensitivity import SENSITIVITY_PREFIX


def _study(url: str, name: str) -> optuna.Study:
    return open_study(url, name)


def _feasible(t: optuna.trial.FrozenTrial) -> bool:
    return all(v <= 0 for v in (t.user_attrs.get("constraints") or {}).values())


def test_studies_summarise_the_storage(server: Server, storage_url: str) -> None:
    status, body = server.get("api/studies")
    assert status == 200 and body["storage"] == storage_url
    by_name = {s["name"]: s for s in body["studies"]}
    assert set(STUDIES) <= set(by_name) and not any(n.startswith(SENSITIVITY_PREFIX) for n in by_name)
    for name in STUDIES:
        study, s = _study(storage_url, name), by_name[name]
        trials = study.get_trials(deepcopy=False)
        for state in ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING"):
            assert s["counts"][state] == sum(t.state.name == state for t in trials), (name, state)
        front = pareto_front(study)
        assert s["front_size"] == len(front) and sorted(s["front"]) == sorted(front["trial"].tolist())
        assert s["strategy"] == study.user_attrs["strategy"] and s["objectives"] == ["accuracy", "flops"]
        assert s["baseline"] == study.user_attrs["baseline"]
        feasible = [t for t in trials if t.state == TrialState.COMPLETE and _feasible(t)]
        assert s["best"]["accuracy"]["value"] == max(t.user_attrs["measures"]["accuracy"] for t in feasible)
        assert s["best"]["flops"]["value"] == min(t.user_attrs["measures"]["flops"] for t in feasible)
        # hypervolume of the feasible trials (accuracy maximised, flops minimised) from the reference
        # point: accuracy at the constraint's bound (0.97 - 0.02), flops at the original's (1.0)
        assert s["reference"] == pytest.approx([0.95, 1.0])
        losses = np.array([[-t.user_attrs["measures"]["accuracy"], t.user_attrs["measures"]["flops"]] for t in feasible])
        ref = np.array([-0.95, 1.0])
        expected = compute_hypervolume(np.minimum(losses, ref), ref)
        assert s["hypervolume"] == pytest.approx(expected, rel=1e-9) and expected > 0
    assert by_name["nsga2-a"]["status"] == "running"  # it has a RUNNING trial
    assert by_name["tpe-b"]["status"] == "finished"  # its budget (n_trials) is used up
    assert by_name["nsga2-a"]["sensitivity"] == [SENSITIVITY_PREFIX + "fake"]


def test_front_is_pareto_front(server: Server, storage_url: str) -> None:
    for name in STUDIES:
        status, body = server.get(f"api/studies/{name}/front")
        expected = pareto_front(_study(storage_url, name))
        assert status == 200 and [r["trial"] for r in body] == expected["trial"].tolist()
        assert [r["accuracy"] for r in body] == expected["accuracy"].tolist()
        assert [r["flops_rel"] for r in body] == pytest.approx(expected["flops_rel"].tolist())
        assert all(isinstance(r["plan_json"], dict) and r["feasible"] for r in body)


def test_trials_column_by_column(server: Server, storage_url: str) -> None:
    status, body = server.get("api/studies/nsga2-a/trials")
    study = _study(storage_url, "nsga2-a")
    trials = study.get_trials(deepcopy=False)
    cols = body["trials"]
    assert status == 200 and cols["number"] == [t.number for t in trials]
    assert cols["state"] == [t.state.name for t in trials]
    front = set(pareto_front(study)["trial"])
    assert [n for n, f in zip(cols["number"], cols["front"]) if f] == sorted(front)
    for i, t in enumerate(trials):
        m = t.user_attrs.get("measures") or {}
        for key in ("accuracy", "accuracy_drop", "flops", "flops_abs", "params", "size_abs"):
            assert cols["measures"][key][i] == m.get(key), (t.number, key)
        assert cols["feasible"][i] == (_feasible(t) if "constraints" in t.user_attrs else None)
    assert "latency" not in cols["measures"]  # never measured: no axis for it
    assert body["meta"]["directions"] == ["maximize", "minimize"]


def test_progress(server: Server, storage_url: str) -> None:
    status, body = server.get("api/studies/tpe-b/progress")
    study = _study(storage_url, "tpe-b")
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    assert status == 200
    steps = body["by_number"]
    assert steps["number"] == [t.number for t in complete]
    hv, acc, flops = steps["hypervolume"], steps["best"]["accuracy"], steps["best"]["flops"]
    assert all(a <= b for a, b in zip(hv, hv[1:])) and hv[-1] == server.get("api/studies/tpe-b")[1]["hypervolume"]
    for k, t in enumerate(complete):  # best-so-far after each trial = best over the feasible ones so far
        seen = [u.user_attrs["measures"] for u in complete[: k + 1] if _feasible(u)]
        assert acc[k] == (max(m["accuracy"] for m in seen) if seen else None)
        assert flops[k] == (min(m["flops"] for m in seen) if seen else None)
    assert sorted(body["by_time"]["number"]) == sorted(steps["number"])


def test_trial_view_data(server: Server, storage_url: str, tmp_path: Path) -> None:
    study = _study(storage_url, "nsga2-a")
    t = next(t for t in study.get_trials(deepcopy=False) if t.number in ARTIFACT_TRIALS and t.state == TrialState.COMPLETE)
    status, body = server.get(f"api/studies/nsga2-a/trials/{t.number}")
    assert status == 200 and body["state"] == "COMPLETE" and body["params"] == t.params
    assert body["plan"] == t.user_attrs["plan"]
    assert [(p["group"], p["sparsity"]) for p in body["prune"]] == [
        (g, s["sparsity"]) for g, s in t.user_attrs["plan"]["prune"].items()
    ]
    rows = {r["key"]: r for r in body["measures"]}
    m, base = t.user_attrs["measures"], study.user_attrs["baseline"]
    assert rows["accuracy"]["value"] == m["accuracy"] and rows["accuracy"]["original"] == base["accuracy"]
    assert rows["flops"]["value"] == m["flops_abs"] and rows["flops"]["original"] == base["flops"]
    assert rows["flops"]["ratio"] == m["flops"]
    assert body["constraints"] == t.user_attrs["constraints"] and body["hostname"] == "fake-host"
    assert body["device"] == "cuda:1 (Fake GPU)" and "device" not in body["user_attrs"]
    assert body["export_command"] == (
        f"slimtune export --storage {storage_url} --study nsga2-a --trial {t.number} --out nsga2-a-trial{t.number}.safetensors"
    )
    status, data, headers = server.raw(body["download"])
    assert status == 200 and f"nsga2-a-trial{t.number}.safetensors" in headers["content-disposition"]
    assert headers["content-type"] == "application/vnd.slimtune.state+safetensors"
    artifact = Path(study.user_attrs["artifacts_dir"]) / t.user_attrs["model_artifact"]
    assert data == artifact.read_bytes()
    served = tmp_path / "served.safetensors"
    served.write_bytes(data)
    assert isinstance(slimtune.load(served, fake_base_model()), torch.nn.Module)  # no pickle involved

    failed = next(t for t in study.get_trials(deepcopy=False) if t.state == TrialState.FAIL)
    status, body = server.get(f"api/studies/nsga2-a/trials/{failed.number}")
    assert status == 200 and body["state"] == "FAIL" and body["fail_reason"] == failed.user_attrs["fail_reason"]
    assert body["measures"] == [] and body["download"] is None

    status, body = server.get("api/studies/tpe-b/trials/3")
    plan = _study(storage_url, "tpe-b").trials[3].user_attrs["plan"]
    assert [(q["layer"], q["bits_w"], q["bits_a"]) for q in body["quantize"]] == [
        (n, q["bits_w"], q["bits_a"]) for n, q in plan["quantize"].items()
    ]


def test_sensitivity_heatmap_data(server: Server, storage_url: str) -> None:
    status, body = server.get("api/sensitivity")
    assert status == 200
    table = next(t for t in body["tables"] if t["name"] == SENSITIVITY_PREFIX + "fake")
    rows = make_storage(storage_url).get_study_user_attrs(
        optuna.load_study(study_name=SENSITIVITY_PREFIX + "fake", storage=storage_url)._study_id
    )["table"]
    assert table["kind"] == "pruning" and table["rows"] == list(dict.fromkeys(r["group"] for r in rows))
    assert table["columns"] == sorted({r["level"] for r in rows})
    for r in rows:
        assert table["drop"][table["rows"].index(r["group"])][table["columns"].index(r["level"])] == r["drop"]
    assert set(STUDIES) <= set(table["studies"])


def test_bad_requests_are_404_with_a_message(server: Server) -> None:
    status, body = server.get("api/studies/nobody")
    assert status == 404 and "study 'nobody' does not exist" in body["error"] and "nsga2-a" in body["error"]
    status, body = server.get("api/studies/nobody/trials")
    assert status == 404 and "'nobody'" in body["error"]
    status, body = server.get("api/studies/nsga2-a/trials/9999")
    assert status == 404 and body["error"] == "study 'nsga2-a' has no trial 9999 (it has 41 trials, numbered from 0)"
    status, body = server.get("api/studies/nsga2-a/trials/-1")
    assert status == 404 and "has no trial -1" in body["error"]
    for path in ("api/studies/nsga2-a/trials/abc", "api/studies/nsga2-a/trials/abc/model"):
        status, body = server.get(path)
        assert status == 404 and body["error"] == (
            "study 'nsga2-a' has no trial 'abc': a trial is named by its number (0 to 40)"
        ), (path, body)
    status, body = server.get("api/studies/nobody/trials/abc")
    assert status == 404 and "study 'nobody' does not exist" in body["error"]
    status, body = server.get("api/studies/tpe-b/trials/0/model")
    assert status == 404 and "has no saved model" in body["error"]
    status, body = server.get("api/nothing")
    assert status == 404 and "/api/nothing" in body["error"]


def test_page_and_plotly_are_served_locally(server: Server) -> None:
    import plotly

    status, html, _ = server.raw("")
    text = html.decode()
    assert status == 200 and 'src="static/plotly.min.js"' in text and 'src="static/dashboard.js"' in text
    assert "http://" not in text and "https://" not in text  # no CDN
    status, js, headers = server.raw("static/plotly.min.js")
    hint, _, rest = js.partition(b"\n")  # the compile hint, then the package's file unchanged
    assert status == 200 and hint == b"//# allFunctionsCalledOnLoad"
    assert rest == (Path(plotly.__file__).parent / "package_data" / "plotly.min.js").read_bytes()
    status, js, _ = server.raw("static/dashboard.js")
    assert status == 200 and b"api/version" in js


def test_version_changes_when_a_trial_is_added(server: Server, storage_url: str) -> None:
    from fake_studies import add_study

    before = server.get("api/version")[1]
    name = "version-probe"
    study = add_study(storage_url, name, 2)
    after = server.get("api/version")[1]
    assert after["token"] != before["token"] and name in after["studies"] and name not in before["studies"]
    study.add_trial(optuna.trial.create_trial(state=TrialState.FAIL, user_attrs={"fail_reason": "x"}))
    again = server.get("api/version")[1]
    assert again["studies"][name] != after["studies"][name]
    assert again["studies"]["tpe-b"] == after["studies"]["tpe-b"]  # untouched study, same token
    assert server.get(f"api/studies/{name}")[1]["counts"]["FAIL"] == 1


def test_reading_never_writes(storage_url: str) -> None:
    def dump() -> str:
        st = make_storage(storage_url)
        out = {}
        for s in st.get_all_studies():
            trials = st.get_all_trials(s._study_id, deepcopy=False)
            out[s.study_name] = [s.user_attrs, [(t.number, t.state.name, t.values, t.user_attrs, t.params) for t in trials]]
        return json.dumps(out, sort_keys=True, default=str)

    before = dump()
    reader = StorageReader.open(storage_url)
    reader.snapshot()  # everything the page or the report can read
    reader.version()
    assert dump() == before


def test_study_names_with_slashes_and_spaces(tmp_path: Path) -> None:
    from fake_studies import add_study

    url = f"sqlite:///{tmp_path / 's.db'}"
    add_study(url, "task a/nsga2 #1", 3)
    reader = StorageReader.open(url)
    assert [s["name"] for s in reader.studies()["studies"]] == ["task a/nsga2 #1"]
    snap = reader.snapshot()
    assert f"/api/studies/{quote('task a/nsga2 #1', safe='')}/trials/0" in snap


def test_start_up_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["dashboard", "--storage", "sqlite:///missing.db"]) == 2
    err = capsys.readouterr().err
    assert "slimtune: error: storage sqlite:///missing.db: no such file" in err and not (tmp_path / "missing.db").exists()
    (tmp_path / "junk.db").write_bytes(b"this is not a database" * 100)
    assert main(["dashboard", "--storage", "sqlite:///junk.db"]) == 2
    err = capsys.readouterr().err
    assert "slimtune: error: storage sqlite:///junk.db: the SQLite file" in err and "is corrupt" in err
    assert main(["report", "--storage", "journal:///nothere.log", "--out", "r.html"]) == 2
    assert "no such file" in capsys.readouterr().err and not (tmp_path / "r.html").exists()


def test_port_in_use_is_a_clear_error(server: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str], storage_url: str) -> None:
    port = server.url.rstrip("/").rsplit(":", 1)[1]
    assert main(["dashboard", "--storage", storage_url, "--port", port]) == 2
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err


def test_journal_storage_and_studies_slimtune_did_not_create(tmp_path: Path) -> None:
    from fake_studies import add_study

    url = f"journal:///{tmp_path / 'studies.log'}"
    add_study(url, "journal-study", 5)
    foreign = optuna.create_study(study_name="plain-optuna", storage=make_storage(url), directions=["minimize", "minimize"])
    for values in ([1.0, 4.0], [2.0, 2.0], [3.0, 3.0]):
        foreign.add_trial(optuna.trial.create_trial(values=values))
    reader = StorageReader.open(url)
    studies = {s["name"]: s for s in reader.studies()["studies"]}
    assert studies["journal-study"]["counts"]["COMPLETE"] == 5
    plain = studies["plain-optuna"]
    assert plain["slimtune"] is False and plain["objectives"] == ["value_0", "value_1"]
    assert sorted(plain["front"]) == [0, 1] and plain["reference"] == [3.0, 4.0]  # the worst values seen
    assert plain["hypervolume"] == pytest.approx(2.0)  # boxes up to (3, 4): (1, 4) adds 0, (2, 2) adds 1 x 2
    cols = reader.trials("plain-optuna")["trials"]
    assert cols["measures"]["value_1"] == [4.0, 2.0, 3.0] and cols["front"] == [True, True, False]


def test_bit_width_sensitivity_tables() -> None:
    from slimtune.dashboard.sensitivity import sensitivity_matrix, uses_table

    rows = [
        {"layer": name, "bits_w": bits, "drop": drop, "metric": 0.9 - drop}
        for name, bits, drop in [("fc", 4, 0.1), ("conv", 8, 0.0), ("conv", 4, 0.2), ("fc", 8, 0.01)]
    ]
    table = sensitivity_matrix(SENSITIVITY_PREFIX + "bits-x", {"table": rows, "baseline": 0.9})
    assert table is not None and table["kind"] == "bits"
    assert table["rows"] == ["fc", "conv"] and table["columns"] == [4, 8]
    assert table["drop"] == [[0.1, 0.01], [0.2, 0.0]]
    assert uses_table({"baseline": {"accuracy": 0.9}, "space": {"bits_w": [4, 8, 32]}}, table)
    assert not uses_table({"baseline": {"accuracy": 0.9}, "space": {"bits_w": [2, 8]}}, table)
    assert not uses_table({"baseline": {"accuracy": 0.8}, "space": {"bits_w": [4, 8]}}, table)
    assert sensitivity_matrix(SENSITIVITY_PREFIX + "y", {}) is None  # a cache whose table is still computed


def test_finished_counts_as_the_budget_does(tmp_path: Path) -> None:
    """A trial retried after its worker died, and one asked for once the budget was used, are not
    counted as finished (as slimtune.trials.driver.counts and the progress bar count)."""
    import warnings

    from fake_studies import add_study
    from slimtune.attributes import Trial
    from slimtune.trials.driver import counts

    url = f"sqlite:///{tmp_path / 'c.db'}"
    study = add_study(url, "c", 3)  # budget (n_trials) 3: 3 finished trials
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        study.add_trial(optuna.trial.create_trial(state=TrialState.FAIL, user_attrs={Trial.FAIL_REASON: "WorkerDied"}))
        study.add_trial(optuna.trial.create_trial(values=[0.9, 0.5], system_attrs={"failed_trial": 3}))
        study.add_trial(optuna.trial.create_trial(state=TrialState.PRUNED, user_attrs={Trial.OVER_BUDGET: True}))
    summary = StorageReader.open(url).study("c")
    assert summary["finished"] == counts(study)["done"] == 4
    assert summary["n_trials"] == 3 and summary["status"] == "finished"
