"""Per-group error rates on synthetic labelled scores with known disparities, checked by hand."""
from __future__ import annotations

import json
import math
import shutil

import pytest

from workbench.bias import Scored, group_rates, wilson


def videos(group: str, n_real: int, fp: int, n_fake: int, tp: int, unscored: int = 0) -> list[Scored]:
    out = [Scored("real", {"skin": group}, "ok", 0.9 if i < fp else 0.1) for i in range(n_real)]
    out += [Scored("fake", {"skin": group}, "ok", 0.9 if i < tp else 0.1) for i in range(n_fake)]
    out += [Scored("fake", {"skin": group}, "inconclusive", None) for _ in range(unscored)]
    return out


def test_wilson_matches_the_formula_by_hand():
    # 10 of 50: p = 0.2, z^2 = 3.8415; by hand: denominator 1.07683, centre 0.22140, half 0.10897.
    low, high = wilson(10, 50)
    assert low == pytest.approx(0.1124, abs=1e-4) and high == pytest.approx(0.3304, abs=1e-4)
    assert wilson(0, 0) is None
    low0, high0 = wilson(0, 40)
    assert low0 == 0.0 and high0 == pytest.approx(3.8415 / (40 + 3.8415), abs=1e-4)


def test_rates_ratios_and_gap_for_known_disparities():
    data = videos("I-II", n_real=100, fp=5, n_fake=80, tp=72) + videos("V-VI", n_real=100, fp=20, n_fake=80, tp=60, unscored=3)
    out = group_rates(data, "skin", threshold=0.5)
    light, dark = out["groups"]["I-II"], out["groups"]["V-VI"]
    assert light["fpr"]["value"] == 0.05 and dark["fpr"]["value"] == 0.20
    assert light["tpr"]["value"] == 0.90 and dark["tpr"]["value"] == 0.75
    assert light["fnr"]["value"] == pytest.approx(0.10) and dark["fnr"]["value"] == pytest.approx(0.25)
    assert out["best_fpr_group"] == "I-II" and out["best_fnr_group"] == "I-II"
    assert dark["fpr_ratio_to_best"] == pytest.approx(4.0) and light["fpr_ratio_to_best"] == 1.0
    assert dark["fnr_ratio_to_best"] == pytest.approx(2.5)
    assert out["equalised_odds_gap"] == pytest.approx(0.15)  # max(TPR gap .15, FPR gap .15)
    assert dark["n_unscored"] == 3 and dark["n_fake"] == 80
    assert dark["fpr"]["low"] == pytest.approx(wilson(20, 100)[0]) and not light["warnings"]


def test_small_groups_are_flagged():
    data = videos("a", n_real=100, fp=1, n_fake=100, tp=90) + videos("b", n_real=12, fp=3, n_fake=40, tp=30)
    out = group_rates(data, "skin", threshold=0.5)
    assert out["groups"]["a"]["warnings"] == []
    (warning,) = out["groups"]["b"]["warnings"]
    assert "only 12 real" in warning and "minimum 30" in warning


def test_a_perfect_best_group_gives_no_infinite_ratio():
    data = videos("a", n_real=40, fp=0, n_fake=40, tp=40) + videos("b", n_real=40, fp=4, n_fake=40, tp=36)
    out = group_rates(data, "skin", threshold=0.5)
    assert out["groups"]["b"]["fpr_ratio_to_best"] is None and out["groups"]["a"]["fpr_ratio_to_best"] == 1.0
    assert not any(isinstance(r["fpr_ratio_to_best"], float) and math.isinf(r["fpr_ratio_to_best"])
                   for r in out["groups"].values())


def test_threshold_is_applied_at_or_above():
    data = [Scored("real", {"g": "x"}, "ok", 0.5), Scored("real", {"g": "x"}, "ok", 0.4999)]
    assert group_rates(data, "g", 0.5)["groups"]["x"]["fpr"]["k"] == 1
    with pytest.raises(ValueError):
        group_rates([Scored("maybe", {"g": "x"}, "ok", 0.1)], "g", 0.5)


def test_bias_run_on_labelled_clips_writes_json_html(tmp_path, two_face_clip, no_face_clip, tiny_detectors, fresh_store):
    from workbench.bias_report import LabelsError, evaluate, read_labels, write_report
    from workbench.pipeline import Sampling

    shutil.copy(two_face_clip[0], tmp_path / "two_faces.mp4")
    (tmp_path / "clips").mkdir()
    shutil.copy(no_face_clip, tmp_path / "clips" / "no_face.mp4")
    labels = tmp_path / "labels.csv"
    labels.write_text(
        "path,label,gender,lighting\n"
        f"{tmp_path / 'two_faces.mp4'},fake,female,studio\n"
        "clips/no_face.mp4,real,<b>x</b>,outdoor\n"
        "missing.mp4,real,male,studio\n")
    rows, columns = read_labels(labels)
    assert columns == ["gender", "lighting"] and len(rows) == 3
    report = evaluate(labels, ["tiny-test"], fresh_store, tmp_path / "evidence", sampling=Sampling(sample_fps=2),
                      min_videos=30)
    det = report["detectors"]["tiny-test"]
    assert report["videos"] == 3 and len(report["refused"]) == 1 and "missing.mp4" in report["refused"][0]["path"]
    assert det["scored"] == 1 and det["unscored"] == 1  # the no-face clip is inconclusive, never a score
    gender = det["columns"]["gender"]["groups"]
    assert gender["female"]["n_fake"] == 1 and gender["<b>x</b>"]["n_unscored"] == 1
    assert all(r["warnings"] for r in gender.values())
    json_path, html_path = write_report(report, tmp_path / "out")
    assert json.loads(json_path.read_text())["labels_sha256"] == report["labels_sha256"]
    page = html_path.read_text()
    assert "&lt;b&gt;x&lt;/b&gt;" in page and "<b>x</b>" not in page and page.count("plotly.js v") <= 1
    labels.write_text("path,label\nclip.mp4,probably\n")
    with pytest.raises(LabelsError, match="line 2"):
        read_labels(labels)


def test_bias_command_stores_the_latest_report_per_detector(tmp_path, two_face_clip, tiny_detectors, monkeypatch, capsys):
    from workbench.cli import main
    from workbench.store import Store

    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path / "home"))
    shutil.copy(two_face_clip[0], tmp_path / "clip.mp4")
    labels = tmp_path / "labels.csv"
    labels.write_text("path,label,age_band\nclip.mp4,fake,30-45\n")
    assert main(["bias", "--labels", str(labels), "--detector", "tiny-test", "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "equalised-odds gap" in printed
    # One fake and no real video: the group has no AUC, and says why.
    assert "'30-45': FPR n/a, FNR" in printed and "AUC n/a (needs scored real and fake videos)" in printed
    store = Store(tmp_path / "home" / "workbench.db")
    latest = store.latest_evaluation("tiny-test")
    assert latest["dataset"] == "labels.csv" and latest["videos"] == 1
    assert latest["result"]["columns"]["age_band"]["groups"]["30-45"]["n_fake"] == 1
    assert (tmp_path / "out" / "evaluation.html").is_file()
    assert main(["bias", "--labels", str(tmp_path / "nope.csv"), "--detector", "tiny-test"]) == 2


EVIL = '<a href="https://evil.example/">click</a><br><b>x</b>'


def test_group_labels_and_columns_reach_plotly_as_text_not_markup():
    from workbench.bias_report import rate_figure, report_html

    data = [Scored("real", {EVIL: EVIL}, "ok", 0.9), Scored("fake", {EVIL: EVIL}, "ok", 0.9)]
    rates = group_rates(data, EVIL, 0.5)
    fig = rate_figure(rates, f"tiny: {EVIL}")
    texts = [x for trace in fig.data for x in trace.x] + [fig.layout.title.text]
    assert all("<" not in t and ">" not in t for t in texts), texts
    assert fig.data[0].x[0].startswith("&lt;a href=&quot;https://evil.example/&quot;&gt;click&lt;/a&gt;")
    from workbench.bias import detector_metrics

    report = {"dataset": "labels.csv", "created_at": "now", "videos": 2, "labels_sha256": "0" * 64, "caveat": "c",
              "min_videos": 30, "refused": [], "items": [],
              "detectors": {"tiny": {"version": "1", "threshold": 0.5, "scored": 2, "unscored": 0,
                                     "metrics": detector_metrics(data, 0.5), "columns": {EVIL: rates}}}}
    page = report_html(report).lower()
    for live in ('<a href="https://evil', "\\u003ca href", "<br><b>", "\\u003cbr"):
        assert live not in page, live


def test_each_group_gets_its_own_auc_and_interval():
    data = (videos("I-II", n_real=100, fp=5, n_fake=80, tp=72, unscored=4)
            + [Scored("fake", {"skin": "fakes only"}, "ok", 0.7)])
    out = group_rates(data, "skin", threshold=0.5)
    light = out["groups"]["I-II"]
    # By hand: 72 x 95 wins, (72 x 5 + 8 x 95) ties counting half, over 80 x 100 pairs; unscored left out.
    assert light["auc"] == pytest.approx((72 * 95 + 0.5 * (72 * 5 + 8 * 95)) / 8000)
    low, high = light["auc_interval"]
    assert low < light["auc"] < high and 0.85 < low and high < 0.99
    assert out["groups"]["fakes only"]["auc"] is None and out["groups"]["fakes only"]["auc_interval"] is None
