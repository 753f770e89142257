"""The evaluation command: metrics against hand-computed values, the run end to end (videos and a still image), the `bias` alias, the stored run, escaping."""
from __future__ import annotations

import hashlib
import io
import json
import math
import shutil
import sqlite3
from contextlib import redirect_stdout
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from workbench.bias import (
    BOOTSTRAP_SEED, Scored, bootstrap_auc, detector_metrics, group_rates, log_loss, operating_point, roc_auc,
    roc_curve, tpr_at_fpr,
)

# Hand-made scores. Pairs (fake > real): 0.35 beats 0.1 (1); 0.5 beats 0.1 and 0.4 and ties 0.5 (2.5);
# 0.8 and 0.9 beat all three (3 + 3): 9.5 of 12 pairs.
REAL = [0.1, 0.4, 0.5]
FAKE = [0.35, 0.5, 0.8, 0.9]
LABELS = ["real"] * 3 + ["fake"] * 4
SCORES = REAL + FAKE


def test_auc_counts_pairs_with_ties_as_half():
    assert roc_auc(LABELS, SCORES) == pytest.approx(9.5 / 12)
    assert roc_auc(["real", "fake"], [0.2, 0.9]) == 1.0 and roc_auc(["real", "fake"], [0.9, 0.2]) == 0.0
    assert roc_auc(["real", "real"], [0.1, 0.2]) is None  # no fake: no AUC, never a made-up number
    with pytest.raises(ValueError):
        roc_auc(["real", "maybe"], [0.1, 0.2])


def test_roc_curve_runs_from_nothing_flagged_to_everything_flagged():
    curve = roc_curve(LABELS, SCORES)
    assert (curve[0]["fpr"], curve[0]["tpr"]) == (0.0, 0.0) and math.isinf(curve[0]["threshold"])
    assert (curve[-1]["fpr"], curve[-1]["tpr"]) == (1.0, 1.0)
    at = {p["threshold"]: (p["fpr"], p["tpr"]) for p in curve}
    assert at[0.5] == pytest.approx((1 / 3, 3 / 4))  # flagged at >= 0.5: one real of three, three fakes of four
    # The trapezoid area under the curve is the pair-counting AUC.
    xs, ys = [p["fpr"] for p in curve], [p["tpr"] for p in curve]
    area = sum((xs[i + 1] - xs[i]) * (ys[i + 1] + ys[i]) / 2 for i in range(len(xs) - 1))
    assert area == pytest.approx(9.5 / 12)


def test_tpr_at_fpr_takes_the_best_threshold_within_the_target_without_interpolating():
    # Thresholds 0.9 and 0.8 flag no real video (FPR 0) and 1 or 2 of 4 fakes; 0.5 reaches FPR 1/3.
    assert tpr_at_fpr(LABELS, SCORES, 0.10) == {"target": 0.10, "tpr": 0.5, "fpr": 0.0, "threshold": 0.8}
    assert tpr_at_fpr(LABELS, SCORES, 0.01)["tpr"] == 0.5
    p = tpr_at_fpr(LABELS, SCORES, 0.34)
    assert p["tpr"] == 0.75 and p["threshold"] == 0.5 and p["fpr"] == pytest.approx(1 / 3)
    # Exactly at the target counts (1 of 10 real flagged is an FPR of 10%).
    labels = ["real"] * 10 + ["fake"] * 2
    scores = [0.9] + [0.1] * 9 + [0.95, 0.5]
    assert tpr_at_fpr(labels, scores, 0.10) == {"target": 0.10, "tpr": 1.0, "fpr": 0.1, "threshold": 0.5}
    assert tpr_at_fpr(["real"], [0.3], 0.05) is None


def test_log_loss_matches_the_formula_and_its_clipping():
    # -(ln 0.8 + ln 0.7) / 2
    assert log_loss(["fake", "real"], [0.8, 0.3]) == pytest.approx((0.2231435513 + 0.3566749439) / 2)
    # A confident mistake: finite only because of the clip, -ln(1e-15) = 34.539; at [0.01, 0.99]: -ln(0.01).
    assert log_loss(["fake"], [0.0]) == pytest.approx(34.538776, rel=1e-6)
    assert log_loss(["real"], [1.0], clip=0.01) == pytest.approx(4.605170, rel=1e-6)
    assert math.isfinite(log_loss(["real"], [1.0]))
    assert log_loss(["fake", "real"], [0.999, 0.001], clip=0.01) == pytest.approx(-math.log(0.99))
    assert log_loss([], []) is None


def test_bootstrap_interval_holds_the_estimate_and_repeats_with_its_seed():
    rng = np.random.default_rng(1)
    labels = ["real"] * 40 + ["fake"] * 30
    scores = list(rng.normal(0.4, 0.15, 40)) + list(rng.normal(0.6, 0.15, 30))
    point = roc_auc(labels, scores)
    low, high = bootstrap_auc(labels, scores)
    assert 0 <= low < point < high <= 1
    assert bootstrap_auc(labels, scores) == (low, high)  # the fixed seed: the same interval every run
    assert bootstrap_auc(labels, scores, seed=BOOTSTRAP_SEED + 1) != (low, high)
    assert bootstrap_auc(["real", "fake"], [0.2, 0.7]) == (1.0, 1.0)  # stratified: every resample has both labels
    assert bootstrap_auc(["real"], [0.2]) is None


def test_operating_point_uses_a_videos_own_threshold_when_it_has_one():
    videos = [Scored("real", {}, "ok", 0.55, 0.6), Scored("real", {}, "ok", 0.55), Scored("fake", {}, "ok", 0.58, 0.6),
              Scored("fake", {}, "inconclusive", None)]
    op = operating_point(videos, 0.5)
    assert (op["fpr"]["k"], op["fpr"]["n"]) == (1, 2) and (op["tpr"]["k"], op["tpr"]["n"]) == (0, 1)
    rates = group_rates([Scored("real", {"g": "a"}, "ok", 0.9)], "g", None)  # no threshold at all: not counted
    assert rates["groups"]["a"]["n_unscored"] == 1 and rates["groups"]["a"]["n_real"] == 0


def test_detector_metrics_count_unscored_videos_per_label_and_leave_them_out():
    videos = [Scored(lab, {}, "ok", s) for lab, s in zip(LABELS, SCORES)]
    videos += [Scored("real", {}, "inconclusive", None), Scored("fake", {}, "error", None),
               Scored("fake", {}, "unavailable", None)]
    m = detector_metrics(videos, 0.5)
    assert m["status_counts"] == {"real": {"ok": 3, "inconclusive": 1}, "fake": {"ok": 4, "error": 1, "unavailable": 1}}
    assert (m["n_real"], m["n_fake"]) == (3, 4) and m["auc"] == pytest.approx(9.5 / 12)
    assert m["auc_low"] <= m["auc"] <= m["auc_high"]
    assert [p["tpr"] for p in m["tpr_at_fpr"]] == [0.5, 0.5, 0.5]
    assert m["operating_point"]["fpr"]["value"] == pytest.approx(1 / 3) and m["operating_point"]["tpr"]["value"] == 0.75
    json.dumps(m, allow_nan=False)  # storable: no infinity (the first ROC point's threshold is null)


# -- the command, end to end ---------------------------------------------------------------------------
HOSTILE = '<img src=x onerror=alert(1)><a href="https://evil.example/">x</a>'


@pytest.fixture(scope="module")
def labelled(tmp_path_factory, two_face_clip, no_face_clip):
    """A labels folder: a face-swap clip (fake), a clip without faces (real), a face photo (real), a broken image."""
    from workbench.demo import demo_sources

    folder = tmp_path_factory.mktemp("labelled")
    shutil.copy(two_face_clip[0], folder / "two_faces.mp4")
    shutil.copy(no_face_clip, folder / "no_face.mp4")
    shutil.copy(demo_sources()["astronaut"], folder / "astronaut.png")
    (folder / "not_an_image.jpg").write_text("this is text, not a JPEG")
    labels = folder / "labels.csv"
    labels.write_text(
        "path,label,gender\n"
        "two_faces.mp4,fake,female\n"
        f"no_face.mp4,real,\"{HOSTILE.replace(chr(34), chr(34) * 2)}\"\n"
        "astronaut.png,real,female\n"
        "not_an_image.jpg,real,male\n")
    return folder, labels


@pytest.fixture(scope="module")
def runs(labelled, tiny_detectors, tmp_path_factory):
    """`evaluate` then its alias `bias` on the same store, as a user would type them."""
    from workbench.cli import main

    folder, labels = labelled
    work = tmp_path_factory.mktemp("evaluate-runs")
    common = ["--labels", str(labels), "--detector", "tiny-test", "--detector", "tiny-even", "--db", str(work / "wb.db"),
              "--evidence-dir", str(work / "evidence"), "--quiet"]
    out = {}
    for command in ("evaluate", "bias"):
        buffer = io.StringIO()
        with redirect_stdout(buffer):
            code = main([command, *common, "--out", str(work / command)])
        out[command] = {"code": code, "stdout": buffer.getvalue(), "dir": work / command,
                        "report": json.loads((work / command / "evaluation.json").read_text())}
    return work, out


def test_evaluate_measures_each_detector_and_the_ensemble(runs, labelled):
    _, out = runs
    run = out["evaluate"]
    assert run["code"] == 0
    report = run["report"]
    assert report["videos"] == 4 and report["images"] == 2
    (refused,) = report["refused"]
    assert refused["line"] == 5 and refused["kind"] == "image" and "not a readable JPEG or PNG image" in refused["reason"]
    for name in ("tiny-test", "tiny-even"):
        d = report["detectors"][name]
        m = d["metrics"]
        # The fake clip and the photo are scored; the clip without a face is inconclusive, counted, left out.
        assert m["status_counts"] == {"real": {"ok": 1, "inconclusive": 1}, "fake": {"ok": 1}}, name
        assert (m["n_real"], m["n_fake"]) == (1, 1) and m["auc"] in (0.0, 1.0)
        assert m["auc_low"] == m["auc_high"] == m["auc"]  # one video per label: every resample is the same
        assert m["log_loss"] is not None and m["log_loss_dfdc_clip"] <= m["log_loss"] + 1e-12
        assert d["columns"]["gender"]["groups"]["female"]["n_fake"] == 1
    items = {it["name"]: it for it in report["items"]}
    ens = report["ensemble"]
    assert ens["members"] == ["tiny-test", "tiny-even"] and ens["metrics"]["n_real"] == 1
    # The ensemble's figures come from the ensemble each analysis stored, not from a recomputation here.
    scored = [it for it in items.values() if it["ensemble"]["status"] == "ok"]
    assert {it["name"] for it in scored} == {"two_faces.mp4", "astronaut.png"}
    for it in scored:
        mean = (it["detectors"]["tiny-test"]["score"] + it["detectors"]["tiny-even"]["score"]) / 2
        assert it["ensemble"]["score"] == pytest.approx(mean) and it["ensemble"]["ensemble_id"] is not None
    fake, real = items["two_faces.mp4"]["ensemble"]["score"], items["astronaut.png"]["ensemble"]["score"]
    assert ens["metrics"]["auc"] == (1.0 if fake > real else 0.0 if fake < real else 0.5)
    assert "ROC AUC" in run["stdout"] and "equalised-odds gap" in run["stdout"] and "ensemble:" in run["stdout"]


def test_bias_is_the_same_command(runs):
    _, out = runs
    a, b = out["evaluate"], out["bias"]
    assert b["code"] == 0
    assert a["stdout"].splitlines()[:-1] == b["stdout"].splitlines()[:-1]  # all but the line naming the run and files
    for key in ("detectors", "ensemble", "refused", "videos", "images", "labels_sha256", "group_columns"):
        assert a["report"][key] == b["report"][key], key
    strip = lambda items: [dict(it, ensemble=dict(it["ensemble"], ensemble_id=None)) for it in items]  # noqa: E731
    assert strip(a["report"]["items"]) == strip(b["report"]["items"])


def test_the_run_is_stored_audited_and_append_only(runs):
    from workbench.store import Store, canonical_json

    work, out = runs
    store = Store(work / "wb.db")
    latest = store.latest_evaluation("tiny-test")
    bias_report = out["bias"]["report"]
    assert latest["dataset"] == "labels.csv" and latest["created_at"] == bias_report["created_at"]
    assert latest["result"] == bias_report["detectors"]["tiny-test"]
    assert latest["auc"] == bias_report["detectors"]["tiny-test"]["metrics"]["auc"]
    assert latest["html_path"] == str(out["bias"]["dir"] / "evaluation.html")
    assert store.latest_evaluation("ensemble")["result"] == bias_report["ensemble"]
    assert store.latest_evaluation("no-such-detector") is None
    run = store.evaluation(latest["evaluation_id"])
    assert run["report"] == bias_report
    entries = [e for e in store.audit_log() if e["action"] == "evaluation.run"]
    assert len(entries) == 2
    assert entries[0]["details"]["report_sha256"] == hashlib.sha256(canonical_json(bias_report).encode()).hexdigest()
    assert entries[0]["details"]["evaluation_id"] == latest["evaluation_id"]
    assert store.verify_history()["ok"]
    for sql in ("UPDATE evaluations SET dataset = 'x'", "DELETE FROM evaluation_results"):
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            with store.conn:
                store.conn.execute(sql)


def test_a_still_image_becomes_a_lossless_one_frame_video(runs, labelled):
    from workbench.store import Store
    from workbench.video import probe

    folder, _ = labelled
    work, out = runs
    item = next(it for it in out["evaluate"]["report"]["items"] if it["name"] == "astronaut.png")
    assert item["kind"] == "image"
    assert item["image_sha256"] == hashlib.sha256((folder / "astronaut.png").read_bytes()).hexdigest()
    store = Store(work / "wb.db")
    evidence = store.evidence(item["sha256"])
    assert evidence["original_name"] == "astronaut.png.mkv"
    stored = work / "evidence" / item["sha256"][:2] / item["sha256"]
    info = probe(stored)
    assert info.frames == 1 and info.codec == "ffv1"
    with av.open(str(stored)) as container:
        frame = next(container.decode(video=0)).to_ndarray(format="rgb24")
    with Image.open(folder / "astronaut.png") as im:
        assert np.array_equal(frame, np.asarray(im.convert("RGB")))  # the pixels, exactly
    # Bit-exact: the second run (`bias`) made the same video, so it reused the evidence.
    again = next(it for it in out["bias"]["report"]["items"] if it["name"] == "astronaut.png")
    assert again["sha256"] == item["sha256"]
    assert out["evaluate"]["report"]["image_sampling"]["rule"].endswith("min_frames=1")
    refusals = [e for e in store.audit_log() if e["action"] == "evidence.refused"]
    assert refusals and "not_an_image.jpg" in refusals[0]["subject"]


def test_hostile_labels_and_names_stay_text_in_the_report(runs):
    from workbench.bias_report import report_html

    _, out = runs
    report = json.loads(json.dumps(out["evaluate"]["report"]))
    report["dataset"] = HOSTILE
    report["items"][0]["name"] = HOSTILE  # a file name shown in the strip plot's hover text
    page = out["evaluate"]["dir"].joinpath("evaluation.html").read_text().lower() + report_html(report).lower()
    for live in ("<img src=x", "\\u003cimg", '<a href="https://evil', "\\u003ca href"):
        assert live not in page, live
    assert "&lt;img src=x onerror=alert(1)&gt;" in page
    assert page.count("plotly.js v") <= 2  # inlined once per page (two pages here)


def test_labels_outside_the_folder_and_bad_rows_are_refused(tmp_path, tiny_detectors, capsys):
    from workbench.cli import main

    (tmp_path / "data").mkdir()
    labels = tmp_path / "data" / "labels.csv"
    labels.write_text("path,label\n../outside.png,real\n")
    args = ["evaluate", "--labels", str(labels), "--detector", "tiny-test", "--db", str(tmp_path / "wb.db"),
            "--evidence-dir", str(tmp_path / "ev"), "--quiet"]
    assert main(args) == 2 and "outside the labels file's folder" in capsys.readouterr().err
    labels.write_text("path,label\nclip.mp4,probably\n")
    assert main(args) == 2 and "line 2" in capsys.readouterr().err
    assert main(args[:2] + [str(tmp_path / "nope.csv")] + args[3:]) == 2


def test_the_detectors_page_shows_the_latest_evaluation(runs, monkeypatch, tmp_path):
    from streamlit.testing.v1 import AppTest

    from workbench.store import Store, backup

    work, out = runs
    home = tmp_path / "home"
    home.mkdir()
    source = Store(work / "wb.db")
    assert backup(source, home / "workbench.db") == "ok"  # a plain copy could miss what is still in the WAL
    source.close()
    Store(home / "workbench.db").create_case("a case")  # any case: the page then makes no demo clip
    monkeypatch.setenv("WORKBENCH_HOME", str(home))
    page = str(Path(__file__).resolve().parent.parent / "workbench" / "ui" / "views" / "detectors.py")
    at = AppTest.from_file(page, default_timeout=120).run()
    assert not at.exception, at.exception
    text = "\n".join(str(el.value) for el in at.get("text"))
    m = out["bias"]["report"]["ensemble"]["metrics"]
    assert "data set labels.csv" in text and "ROC AUC" in text and "TPR at 1% FPR" in text
    assert f"ROC AUC {m['auc']:.3f} [{m['auc_low']:.3f}, {m['auc_high']:.3f}]" in text


def test_fairface_labels_lists_the_evaluation_half_as_real_images(tmp_path):
    from conftest import shared
    from tools.datasets.fairface_labels import main as fairface_labels
    from workbench.bias_report import read_labels

    folder = shared("fairface")
    out = tmp_path / "fairface_eval.csv"
    assert fairface_labels([str(out), "--folder", str(folder)]) == 0
    rows, columns = read_labels(out, allow_outside=True)
    assert columns == ["age", "gender"] and len(rows) == 270
    assert {r["label"] for r in rows} == {"real"} and {r["kind"] for r in rows} == {"image"}
    cells: dict[tuple[str, str], int] = {}
    for r in rows:
        key = (r["groups"]["age"], r["groups"]["gender"])
        cells[key] = cells.get(key, 0) + 1
    assert len(cells) == 18 and set(cells.values()) == {15}  # 9 age bands x 2 genders, balanced


def test_an_image_over_the_pixel_limit_or_not_a_file_is_refused_before_decoding(tmp_path):
    from workbench.bias_report import image_to_video
    from workbench.evidence import EvidenceError
    from workbench.video import Limits

    Image.new("RGB", (20, 10), (200, 10, 10)).save(tmp_path / "small.png")
    with pytest.raises(EvidenceError, match="20x10 pixels is over the limit of 100"):
        image_to_video(tmp_path / "small.png", tmp_path / "out.mkv", Limits(max_pixels=100))
    assert not (tmp_path / "out.mkv").exists()
    with pytest.raises(EvidenceError, match="not a regular file"):
        image_to_video("/dev/zero", tmp_path / "out.mkv")
    facts = image_to_video(tmp_path / "small.png", tmp_path / "out.mkv")
    assert (facts["width"], facts["height"]) == (20, 10)  # odd sizes and tiny images are fine: RGB, no chroma halving
