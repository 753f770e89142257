"""The workbench's pages. Widgets here; every figure, table and fact comes from the core."""
from __future__ import annotations

import getpass
from pathlib import Path

import streamlit as st

from detectors.base import CARD_FIELDS, SCOPE_CAVEAT
from detectors.registry import default_detectors, get_detector, list_detectors
from workbench import config, review
from workbench.evidence import EvidenceError, display_name, ingest, ingest_from_import_dir
from workbench.pipeline import Sampling
from workbench.report import case_report
from workbench.service import analyse_evidence
from workbench.store import VERDICTS, StoreError
from workbench.ui import errors, resources, selection

STATUS_ICON = {"ok": "✅", "inconclusive": "❔", "unavailable": "⛔", "error": "⚠️"}


# -- shared bits ------------------------------------------------------------------------------
def caveat() -> None:
    st.warning(SCOPE_CAVEAT, icon="⚠️")


def analyst() -> str:
    """Who is working: the signed-in account in team mode, else the name typed in the sidebar."""
    return st.session_state.get("analyst") or getpass.getuser()


def current_case() -> dict | None:
    return selection.current_case(resources.store())


def current_evidence(case: dict) -> dict | None:
    return selection.current_evidence(resources.store(), case)


def annotating(case: dict, evidence: dict | None) -> str:
    """The line beside every note and verdict form: which case and file the entry will be filed on."""
    where = f"Filed on case #{case['id']} {case['name']}"
    if evidence is None:
        return where + " (no evidence file)"
    return where + f"\nfile {evidence['original_name']} · sha256 {evidence['sha256']}"


def latest_verdict(case_id: int, sha256: str | None = None) -> dict | None:
    for v in resources.store().verdicts(case_id):
        if sha256 is None or v["sha256"] in (sha256, None):
            return v
    return None


def copy_widget(widget_key: str, setter) -> None:
    """on_change callback: copy a widget's value into the plain selection keys."""
    setter(st.session_state[widget_key])


def draw_from(widget_key: str, value, options: list | None = None) -> None:
    """Set a widget from the selection before it is drawn (never after: Streamlit refuses that)."""
    if options is not None and value not in options:
        st.session_state.pop(widget_key, None)
    else:
        st.session_state[widget_key] = value


def score_text(status: str, score: float | None) -> str:
    return f"{score:.3f}" if status == "ok" and score is not None else status.upper()


# -- Cases ------------------------------------------------------------------------------------
def cases_page() -> None:
    st.title("Cases")
    store = resources.store()
    with st.expander("New case", expanded=not store.cases()):
        with st.form("new_case", clear_on_submit=True):
            name = st.text_input("Case name")
            description = st.text_area("Description")
            if st.form_submit_button("Create case"):
                try:
                    selection.select_case(store.create_case(name, description, actor=analyst()))
                    st.rerun()
                except StoreError as exc:
                    st.error(str(exc))
    cases = store.cases()
    if not cases:
        st.info("No case yet: create one above.")
        return
    labels = {c["id"]: f"#{c['id']} {c['name']}" for c in cases}
    case = current_case()
    draw_from("case_select", case["id"])
    st.selectbox("Open case", list(labels), format_func=labels.get, key="case_select",
                 on_change=copy_widget, args=("case_select", selection.select_case))
    case = current_case()
    st.subheader(f"Case #{case['id']}")
    st.text(f"{case['name']}\n{case['description'] or ''}\ncreated {case['created_at']} by {case['created_by']}")

    evidence_list = store.case_evidence(case["id"])
    rows = []
    for ev in evidence_list:
        probe = ev["probe"]
        analyses = store.analyses(ev["sha256"])
        latest = {}
        for a in analyses:
            latest[a["detector"]] = a
        verdict = latest_verdict(case["id"], ev["sha256"])
        rows.append({
            "file (client name)": ev["original_name"], "sha256": ev["sha256"],
            "video": f"{probe['width']}x{probe['height']} · {probe['fps']:.2f} fps · {probe['frames']} frames · {probe['duration_s']:.1f} s · {probe['codec']}",
            "analysis": ", ".join(f"{n}: {score_text(a['status'], a['score'])}" for n, a in latest.items()) or "not analysed",
            "analyst verdict": verdict["verdict"] if verdict else "—",
        })
    if rows:
        st.dataframe(rows, hide_index=True, width="stretch")
        caveat()
        shas = [e["sha256"] for e in evidence_list]
        selected = current_evidence(case)["sha256"]
        pick = st.selectbox("Review evidence", shas, index=shas.index(selected),
                            format_func=lambda s: next(display_name(e["original_name"]) + f" · {s[:12]}…" for e in evidence_list if e["sha256"] == s))
        if st.button("Open in Review", type="primary"):
            selection.select_evidence(pick)
            st.switch_page(st.session_state["_pages"]["review"])
    else:
        st.info("No evidence in this case yet.")

    st.subheader("Add evidence")
    upload_tab, folder_tab = st.tabs(["Upload", "From the evidence folder"])
    with upload_tab:
        uploaded = st.file_uploader("Video file", type=None, key=f"upload-{case['id']}")
        if uploaded is not None and st.button("Add uploaded video"):
            _add_evidence(case["id"], uploaded, uploaded.name)
    with folder_tab:
        folder = config.import_dir()
        files = sorted(p for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else []
        st.caption(f"Files under {folder} (set WORKBENCH_IMPORT_DIR to change).")
        if files:
            chosen = st.selectbox("File", files, format_func=lambda p: str(p.relative_to(folder)))
            if st.button("Add selected file"):
                _add_evidence(case["id"], chosen, chosen.name)
        else:
            st.text("No files there.")


def _add_evidence(case_id: int, source, name: str) -> None:
    # From the import folder, open the file once (no symlink race between a check and the open);
    # an upload is a file object and has no such race.
    with st.spinner("Hashing, copying and probing…"):
        try:
            if isinstance(source, Path):
                ev = ingest_from_import_dir(resources.store(), source, config.import_dir(), config.evidence_dir(),
                                            analyst(), case_id, config.limits())
            else:
                ev = ingest(resources.store(), source, name, config.evidence_dir(), analyst(), case_id, config.limits())
        except EvidenceError as exc:
            st.error(f"Refused: {exc}")
            return
    selection.select_case(case_id)
    selection.select_evidence(ev["sha256"])
    st.success(f"Added, sha256 {ev['sha256']}")


# -- Review -----------------------------------------------------------------------------------
def review_page() -> None:
    st.title("Review")
    case = current_case()
    if case is None:
        st.info("Create a case first.")
        return
    evidence = current_evidence(case)
    if evidence is None:
        st.info("This case has no evidence yet: add a video on the Cases page.")
        return
    store = resources.store()
    items = store.case_evidence(case["id"])
    draw_from("evidence_select", evidence["sha256"])
    st.selectbox("Evidence", [e["sha256"] for e in items], key="evidence_select",
                 on_change=copy_widget, args=("evidence_select", selection.select_evidence),
                 format_func=lambda s: next(display_name(e["original_name"]) for e in items if e["sha256"] == s) + f" · {s[:12]}…")
    evidence = current_evidence(case)
    sha = evidence["sha256"]
    st.text(f"case #{case['id']} {case['name']}  ·  {evidence['original_name']}  ·  sha256 {sha}")

    run_detectors_ui(sha, evidence)
    key = resources.results_key(sha)
    runs = review.face_runs(store, sha)
    run_id = None
    if len(runs) > 1:
        run_id = st.selectbox("Analysis run", [r["id"] for r in runs], format_func=lambda i: next(r["label"] for r in runs if r["id"] == i))
    data = resources.review_data(sha, run_id, key)
    detector_summary(data)
    scrubber(sha, evidence["stored_path"], data, key)


def run_detectors_ui(sha: str, evidence: dict) -> None:
    with st.expander("Run detectors", expanded=not resources.store().analyses(sha)):
        names = st.multiselect("Detectors", list_detectors(), default=default_detectors())
        for n in names:
            status = get_detector(n).weights_status()
            if not status.installed:
                st.text(f"{n}: {status.detail}")
        mode = st.radio("Frames", ["Triage: 2 frames per second", "Every frame", "Custom rate"], horizontal=True)
        fps = 2.0 if mode.startswith("Triage") else None
        if mode == "Custom rate":
            fps = st.number_input("Frames per second", min_value=0.1, max_value=60.0, value=5.0)
        if st.button("Run", type="primary", disabled=not names):
            bar = st.progress(0.0, text="Decoding and finding faces…")

            def progress(done: int, total: int, stage: str) -> None:
                bar.progress(min(1.0, done / max(1, total)), text=f"{stage}: frame {done} of {total}")

            try:
                result = analyse_evidence(resources.store(), sha, names, Sampling(sample_fps=fps), actor=analyst(),
                                          device=config.device(), progress=progress)
            except EvidenceError as exc:  # custody: the stored file no longer matches its hash
                st.error(str(exc))
                return
            bar.progress(1.0, text="Done")
            st.session_state["run_message"] = ", ".join(f"{n}: {score_text(o.status, o.score)}" for n, o in result.detectors.items())
            st.rerun()
    if st.session_state.get("run_message"):
        st.success("Analysis stored: " + st.session_state.pop("run_message"))


def detector_summary(data: review.ReviewData) -> None:
    if not data.detectors:
        st.info("No detector has run on this video yet.")
        return
    caveat()
    cols = st.columns(len(data.detectors))
    for col, (name, d) in zip(cols, data.detectors.items()):
        with col:
            st.metric(f"{STATUS_ICON.get(d.status, '')} {name}", score_text(d.status, d.score),
                      help=f"threshold {d.threshold}; rule {d.rule}; weights {d.weights_sha256}")
            if d.status != "ok":
                st.caption(d.reason or "")
            else:
                st.caption(f"{len(d.frames_used)} frames used · threshold {d.threshold:.2f}")
                if d.upstream and d.upstream.get("score") is not None:
                    st.caption(f"Authors' rule: {d.upstream['score']:.3f} ({d.upstream['rule']})")
    for item in review.disagreements(data):
        listed = ", ".join(f"{n} {v:.2f}" for n, v in item["scores"].items())
        st.warning(f"Detectors disagree strongly on track T{item['track']} ({listed}). {review.AGREEMENT_NOTE}")
    if review.has_ensemble(data):
        st.caption(review.ensemble_caption(data.ensemble) + f" {review.AGREEMENT_NOTE}")


PLAY_INTERVAL_S = 0.4


def scrubber(sha: str, path: str, data: review.ReviewData, key: str) -> None:
    total, fps = data.total_frames, data.fps
    selection.select_frame(max(0, min(total - 1, selection.current_frame())))
    # The stored ensemble first when it combines detectors: the series the report reads first too.
    choices = ([review.ENSEMBLE] if review.has_ensemble(data) else []) + data.scored_detectors()
    chosen = st.session_state.get("detector")
    threshold_default = review.threshold_for(data, chosen if chosen in choices else (choices[0] if choices else None))
    play_frames = data.frames_analysed or list(range(total))

    # Play sits outside the fragment: a fragment's run_every is fixed when the page runs, so
    # switching play on must rerun the page to declare the fragment again with a timer.
    draw_from("play_toggle", selection.playing())
    st.toggle("Play", key="play_toggle", on_change=copy_widget, args=("play_toggle", selection.set_playing),
              help="step through the analysed frames")

    @st.fragment(run_every=PLAY_INTERVAL_S if selection.playing() else None)
    def frame_view() -> None:
        with errors.shown_plainly():
            _frame_view(sha, path, data, key, total, fps, threshold_default, choices, play_frames)

    frame_view()


def _frame_view(sha: str, path: str, data: review.ReviewData, key: str, total: int, fps: float,
                threshold_default: float, choices: list[str], play_frames: list[int]) -> None:
    if selection.playing():
        nxt = review.next_frame(play_frames, selection.current_frame())
        if nxt is None:
            selection.set_playing(False)
            st.rerun()  # the whole page, so the fragment loses its timer and the toggle shows off
        selection.select_frame(nxt)
    detector_name = st.session_state.get("detector") if st.session_state.get("detector") in choices else (choices[0] if choices else None)
    threshold = st.session_state.get(f"threshold:{detector_name}", threshold_default)
    cross = review.crossings(data, detector_name, threshold) if detector_name else []
    step_s = max(1, int(round(fps)))
    current = selection.current_frame()

    def shift(delta: int) -> None:
        selection.select_frame(max(0, min(total - 1, selection.current_frame() + delta)))

    def jump(target: int | None) -> None:
        if target is not None:
            selection.select_frame(target)

    def set_time() -> None:
        selection.select_frame(max(0, min(total - 1, int(round(st.session_state["time_s"] * fps)))))

    b = st.columns(7)
    b[0].button("−1 s", on_click=shift, args=(-step_s,), width="stretch")
    b[1].button("−1 frame", on_click=shift, args=(-1,), width="stretch")
    b[2].button("+1 frame", on_click=shift, args=(1,), width="stretch")
    b[3].button("+1 s", on_click=shift, args=(step_s,), width="stretch")
    b[4].button("◀ crossing", on_click=jump, args=(review.previous_frame(cross, current),),
                disabled=not cross, width="stretch", help="previous frame where a score crosses the threshold")
    b[5].button("crossing ▶", on_click=jump, args=(review.next_frame(cross, current),),
                disabled=not cross, width="stretch", help="next frame where a score crosses the threshold")
    draw_from("time_s", round(current / fps, 3))
    b[6].number_input("Time (s)", min_value=0.0, max_value=(total - 1) / fps, step=1.0 / fps, format="%.3f",
                      key="time_s", on_change=set_time, help="jump to a time in seconds")
    draw_from("frame_slider", current)
    st.slider("Frame", 0, max(0, total - 1), key="frame_slider", on_change=copy_widget,
              args=("frame_slider", selection.select_frame), help="frame number; the time is shown below")
    selection.sync_url()  # scrubbing reruns only this fragment, not the page that mirrors the URL
    frame = current
    analysed = frame in set(data.frames_analysed)
    image, faces, crops = resources.frame_with_boxes(sha, path, frame, data.face_run_id, detector_name, key)
    note = "" if analysed else (" · not analysed yet" if not data.frames_analysed
                                else " · between analysed frames (boxes interpolated)")
    st.image(image, caption=f"frame {frame} · {frame / fps:.3f} s{note}", width="stretch")
    if faces:
        cols = st.columns(min(6, len(faces)))
        for col, face, crop in zip(cols, faces, crops):
            label = f"T{face.track_id}" + (f" · {face.score:.3f}" if face.score is not None else "") + f" · {face.kind}"
            col.image(crop, caption=label)
    else:
        st.caption("No face on this frame.")
    if selection.current_track() not in {f.track_id for f in faces}:
        selection.select_track(None)

    if choices:
        c1, c2 = st.columns([2, 1])
        c1.selectbox("Timeline detector (labels, crossings)", choices, key="detector")
        # One slider per detector, starting at that detector's (or the stored ensemble's) threshold.
        c2.slider("Threshold", 0.0, 1.0, value=float(threshold_default), step=0.01, key=f"threshold:{detector_name}")
        fig = review.timeline_figure(data, frame, threshold)
        st.plotly_chart(fig, on_select=_seek_to_clicked_point, selection_mode="points", key="timeline", width="stretch")
        with st.expander("Score distribution against the threshold"):
            st.plotly_chart(review.score_histogram(data, detector_name, threshold), width="stretch")
            if detector_name in data.detectors:
                threshold_note = _threshold_note(detector_name)
                if threshold_note:
                    st.caption(threshold_note)
        gradcam_ui(sha, path, data, frame, faces, key)


def _seek_to_clicked_point() -> None:
    """on_select callback of the timeline: seek to the clicked point's frame before the slider is drawn."""
    event = st.session_state.get("timeline") or {}
    points = (event.get("selection") or {}).get("points") or []
    # An empty selection (a deselect, or the chart redrawn) is not a seek.
    try:
        frame = int(round(float(points[0]["x"]))) if points else None
    except (KeyError, TypeError, ValueError):
        frame = None  # not a point on the frame axis
    if frame is not None:
        selection.select_frame(frame)


def _threshold_note(name: str) -> str | None:
    return get_detector(name).threshold_note() if name in list_detectors() else None


def gradcam_ui(sha: str, path: str, data: review.ReviewData, frame: int, faces, key: str) -> None:
    st.subheader("Grad-CAM")
    loadable = [n for n, d in data.detectors.items() if d.status == "ok"]
    if not faces or not loadable:
        st.caption("Pick a frame with a face, after a detector has scored this video.")
        return
    c1, c2 = st.columns(2)
    tracks = [f.track_id for f in faces]
    draw_from("track_select", selection.current_track(), tracks)
    track = c1.selectbox("Face", tracks, format_func=lambda t: f"track {t}", key="track_select",
                         on_change=copy_widget, args=("track_select", selection.select_track))
    selection.select_track(track)  # the face on screen is the one a note pins
    name = c2.selectbox("Detector", loadable, key="gradcam_detector")
    if st.button("Explain this face"):
        st.session_state["explain"] = (sha, frame, track, name)
    if st.session_state.get("explain") == (sha, frame, track, name):
        with st.spinner("Computing Grad-CAM…"):
            out = resources.gradcam(sha, path, frame, track, name, data.face_run_id, key)
        if out is None:
            st.caption("That face is not on this frame.")
            return
        overlay, model_input, placed, score = out
        a, b, c = st.columns(3)
        a.image(model_input, caption="exact input the model saw (before normalisation)")
        b.image(overlay, caption=f"Grad-CAM · score {score:.3f}")
        c.image(placed, caption="in place on the frame")
        caveat()


# -- Notes & verdict --------------------------------------------------------------------------
def notes_page() -> None:
    st.title("Notes & verdict")
    case = current_case()
    if case is None:
        st.info("Create a case first.")
        return
    store = resources.store()
    st.text(f"case #{case['id']}  {case['name']}")
    evidence = current_evidence(case)
    sha = evidence["sha256"] if evidence else None
    frame = selection.current_frame(evidence)
    track = selection.current_track()

    st.subheader("Notes")
    with st.form("add_note", clear_on_submit=True):
        st.text(annotating(case, evidence))
        text = st.text_area("New note")
        pin = st.checkbox(f"Pin to the current frame ({frame})" + (f" and track {track}" if track is not None else ""),
                          value=bool(evidence))
        if st.form_submit_button("Save note"):
            try:
                fps = evidence["probe"]["fps"] if evidence else None
                store.add_note(case["id"], text, analyst(), sha256=sha if pin else None,
                               frame=frame if pin else None, time_s=frame / fps if pin and fps else None,
                               track_id=track if pin else None)
                st.rerun()
            except StoreError as exc:
                st.error(str(exc))
    for note in store.notes(case["id"]):
        with st.container(border=True):
            where = ""
            if note["frame"] is not None:
                where = f" · frame {note['frame']}" + (f" ({note['time_s']:.2f} s)" if note["time_s"] is not None else "")
                where += f" · track {note['track_id']}" if note["track_id"] is not None else ""
            if note["sha256"]:
                where += f" · file {note['sha256'][:12]}…"
            st.text(f"note {note['note_id']} v{note['version']} · {note['author']} · {note['created_at']}{where}")
            st.text(note["text"])
            cols = st.columns(3)
            if note["frame"] is not None and cols[0].button("Jump to frame", key=f"jump-{note['note_id']}"):
                if note["sha256"]:
                    selection.select_evidence(note["sha256"])
                selection.select_frame(note["frame"], note["track_id"])
                st.switch_page(st.session_state["_pages"]["review"])
            with cols[1].popover("Edit"):
                new_text = st.text_area("Text", value=note["text"], key=f"edit-text-{note['note_id']}")
                if st.button("Save new version", key=f"edit-{note['note_id']}"):
                    store.edit_note(note["note_id"], new_text, analyst())
                    st.rerun()
            if note["version"] > 1:
                with cols[2].expander("History"):
                    for h in store.note_history(note["note_id"]):
                        st.text(f"v{h['version']} · {h['author']} · {h['created_at']}")
                        st.text(h["text"])

    st.subheader("Analyst verdict")
    st.caption("Your judgement, recorded separately from any model score.")
    with st.form("verdict"):
        st.text(annotating(case, evidence))
        verdict = st.radio("Verdict", VERDICTS, horizontal=True)
        reason = st.text_area("Reason")
        scope = st.checkbox("For the current evidence only", value=bool(evidence))
        if st.form_submit_button("Record verdict"):
            try:
                store.set_verdict(case["id"], verdict, reason, analyst(), sha256=sha if scope else None)
                st.rerun()
            except StoreError as exc:
                st.error(str(exc))
    history = store.verdicts(case["id"])
    if history:
        st.dataframe([{"when (UTC)": v["created_at"], "verdict": v["verdict"], "reason": v["reason"], "author": v["author"],
                       "evidence": (v["sha256"] or "whole case")[:16]} for v in history], hide_index=True, width="stretch")
    report_ui(case)


def report_ui(case: dict) -> None:
    st.subheader("Report")
    if st.button("Build HTML report"):
        with st.spinner("Verifying evidence hashes and building the report…"):
            st.session_state["report"] = (case["id"], case_report(resources.store(), case["id"], actor=analyst()))
    built = st.session_state.get("report")
    if built and built[0] == case["id"]:
        st.download_button("Download report", built[1], file_name=f"case-{case['id']}-report.html", mime="text/html")


# -- Detectors & About ------------------------------------------------------------------------
def detectors_page() -> None:
    st.title("Detectors")
    caveat()
    for name in list_detectors():
        det = get_detector(name)
        status = det.weights_status()
        card = det.card
        with st.container(border=True):
            st.subheader(f"{name} v{det.version}" + ("  (default)" if det.default else ""))
            st.text(f"weights: {status.detail}")
            if not status.installed:
                st.code(det.install_hint or f"python -m workbench weights install {name}", language="bash")
            st.text(f"input {det.crop.size}px, margin {det.crop.margin}, frames: {det.sampling.kind}; threshold {det.threshold:.3f}")
            if det.threshold_note():
                st.text(det.threshold_note())
            bias = resources.store().latest_bias_report(name)
            if bias:
                st.markdown("**Latest bias evaluation**")
                st.text(f"{bias['created_at']} · data set {bias['dataset']} · {bias['videos']} videos, {bias['scored']} scored · "
                        f"labels sha256 {bias['labels_sha256'][:16]}…")
                for column, rates in bias["result"]["columns"].items():
                    gap = rates["equalised_odds_gap"]
                    st.text(f"{column}: equalised-odds gap {'n/a' if gap is None else f'{gap:.3f}'}; "
                            + ", ".join(f"{g}: FPR {r['fpr']['value'] if r['fpr']['value'] is not None else 'n/a'}"
                                        f"{' (too few videos)' if r['warnings'] else ''}" for g, r in rates["groups"].items()))
            else:
                st.text("Bias evaluation: not run on this installation (python -m workbench bias --labels LABELS.csv).")
            for label, key in CARD_FIELDS:
                st.markdown(f"**{label}**")
                st.text(getattr(card, key))


def about_page() -> None:
    st.title("About & scope")
    st.markdown(
        """
**What the detectors can tell you.** Each detector estimates, face by face and frame by frame, how
likely it is that a face was **swapped or blended in**. The timeline shows where in the video those
estimates rise, and Grad-CAM shows which part of the face drove them.

**What they cannot tell you.**
- They do not judge **audio**, **lip-sync** or **reenactment** (the original face made to say or do
  something else), **fully synthetic** faces, edits outside the face, or cheap edits such as cuts and
  speed changes.
- A score is **not evidence on its own**. High scores can come from compression, blur, make-up or
  glasses; a careful swap can score low.
- Detectors trained on few or unbalanced groups of people can **err more on some groups** than others
  (FakeFinder's audit found one model flagging East Asian faces at more than six times the White
  false-positive rate). Each model card says what is known, and what is not measured.

**What the workbench does to keep this honest.** A detector that could not judge says
`inconclusive`, `unavailable` or `error`, with the reason, and never shows a number. Evidence is
stored under its sha256 and never modified. Notes and verdicts are kept with their full history,
separate from model scores.
"""
    )
    caveat()
