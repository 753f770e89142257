"""The Review page: the scrubber, faces, the timeline, Grad-CAM and running detectors.

Laid out for looking (1400 x 1000 without scrolling): the frame on the left with the scrubber
under it, the face crops and the timeline on the right; the run form, the scope caveat and each
detector's details folded to one line each.
"""
from __future__ import annotations

import time

import streamlit as st

from detectors.base import SCOPE_CAVEAT
from detectors.registry import default_detectors, get_detector, list_detectors
from workbench import jobs, review
from workbench.aggregate import BAND_RULE, band, score_rules, video_lines
from workbench.pipeline import Sampling
from workbench.ui import archive, errors, identity, keys, resources, selection, start_here
from workbench.ui.views import review_panels
from workbench.ui.common import (
    STATUS_ICON, band_line, caveat, copy_widget, current_case, current_evidence, draw_from, score_text,
)

def review_page() -> None:
    st.title("Review")
    start_here.box(resources.store())  # first launch: three steps, until dismissed or a case of one's own
    case = current_case()
    if case is None:
        st.info("Create a case first.")
        return
    evidence = current_evidence(case)
    if evidence is None:
        st.info("This case has no evidence yet: add a video on the Cases page.")
        return
    store = resources.store()
    items, evidence = archive.review_files(store, case, evidence)  # archived files hidden unless "Show archived"
    if evidence is None:
        st.info("Every file of this case is archived: turn on Show archived on the Cases page to see them.")
        return
    draw_from("evidence_select", evidence["sha256"])
    top = st.columns([2, 5, 2], vertical_alignment="center")
    top[0].selectbox("Evidence", [e["sha256"] for e in items], key="evidence_select", label_visibility="collapsed",
                     on_change=copy_widget, args=("evidence_select", selection.select_evidence),
                     format_func=lambda s: archive.file_label(items, s))
    evidence = current_evidence(case)
    sha = evidence["sha256"]
    top[1].text(f"case #{case['id']} {case['name']}  ·  {evidence['original_name']}  ·  sha256 {sha}")

    key = resources.results_key(sha)
    runs = review.face_runs(store, sha)
    run_id = None
    if len(runs) > 1:
        run_id = top[2].selectbox("Analysis run", [r["id"] for r in runs], label_visibility="collapsed",
                                  format_func=lambda i: next(r["label"] for r in runs if r["id"] == i))
    # One line of folded controls: the run form, the scope and details, Play and the keys.
    bar = st.columns([3, 3, 1, 1], vertical_alignment="top")
    with bar[0]:
        run_detectors_ui(sha, evidence, case["id"])
    data = resources.review_data(sha, run_id, key)
    detector_summary(data, details=bar[1])
    scrubber(sha, evidence["stored_path"], data, key, bar=(bar[2], bar[3]))


def run_detectors_ui(sha: str, evidence: dict, case_id: int | None = None) -> None:
    store = resources.store()
    with st.expander("Run detectors", expanded=not store.analyses(sha)):
        installed = {n: get_detector(n).weights_status() for n in list_detectors()}
        names = st.multiselect("Detectors", list(installed), default=default_detectors(),
                               format_func=lambda n: n if installed[n].installed else f"{n} (not installed)")
        for n in names:
            if not installed[n].installed:
                st.text(f"{n}: {installed[n].detail}")
        runnable = [n for n in names if installed[n].installed]
        why_not = ("Pick at least one detector." if not names else
                   None if runnable else "Every detector picked is not installed: install its weights first "
                   "(see the Detectors page); nothing would be scored.")
        mode = st.radio("Frames", ["Triage: 2 frames per second", "Every frame", "Custom rate"], horizontal=True)
        fps = 2.0 if mode.startswith("Triage") else None
        if mode == "Custom rate":
            fps = st.number_input("Frames per second", min_value=0.1, max_value=60.0, value=5.0)
        # The analysis runs in a worker process (`make run` starts them): the page only queues it.
        if why_not:
            st.caption(why_not)
        identity.prompt()  # a job records who asked: no name, no job
        if st.button("Run", type="primary", disabled=bool(why_not), help=why_not) \
                and (who := identity.refuse_write()) is not None:
            try:
                job_id = jobs.submit(store, sha, names, Sampling(sample_fps=fps), actor=who, case_id=case_id)
            except jobs.JobError as exc:
                st.error(str(exc))
                return
            st.session_state["run_message"] = f"Job #{job_id} queued: a worker runs it; this page shows its progress."
            st.rerun()
    if st.session_state.get("run_message"):
        st.success(st.session_state.pop("run_message"))
    jobs_ui(sha)


JOB_POLL_S = 1.0


def jobs_ui(sha: str) -> None:
    """This file's queued and running jobs with live progress and Cancel; the last job's end if it failed."""
    listed = jobs.evidence_jobs(resources.store(), sha)
    refused = st.session_state.pop("cancel_refused", None)
    if refused:
        st.error(f"Not cancelled. {refused}")
    if not any(j["state"] in jobs.ACTIVE for j in listed):
        if listed and listed[0]["state"] in ("failed", "cancelled"):
            st.warning(jobs.describe(listed[0]))
        return

    @st.fragment(run_every=JOB_POLL_S)
    def job_progress() -> None:
        active = [j for j in jobs.evidence_jobs(resources.store(), sha) if j["state"] in jobs.ACTIVE]
        if not active:
            st.rerun()  # the whole page, which reads the stored analysis as after any run
        for job in reversed(active):  # oldest first: the order a worker takes them
            c1, c2 = st.columns([5, 1])
            c1.progress(jobs.fraction(job), text=jobs.describe(job))
            c2.button("Cancel", key=f"cancel-job-{job['id']}", disabled=bool(job["cancel_requested"]),
                      on_click=_cancel, args=(job["id"],))

    job_progress()


def _cancel(job_id: int) -> None:
    """Cancel's callback: recorded under the analyst's name; refused (with the reason) without one."""
    who = identity.writer()
    if who is None:
        st.session_state["cancel_refused"] = identity.refusal()
        return
    jobs.cancel(resources.store(), job_id, who)


# The caveat's first sentence (without its "Face-swap detector:" lead, so it fits one line) stays on
# screen beside the results; the whole caveat is one click away.
CAVEAT_LINE = SCOPE_CAVEAT.split(". ")[0].split(": ", 1)[-1].capitalize() + "."


def detector_summary(data: review.ReviewData, details=None) -> None:
    """Each detector's band in one row with the caveat's first sentence beside it; the whole caveat
    and how each detector scored folded into an expander drawn in `details` (the page when None)."""
    if not data.detectors:
        st.info("No detector has run on this video yet.")
        return
    results, scope = st.columns([1, 1], vertical_alignment="center")
    scope.warning(CAVEAT_LINE, icon=":material/warning:")
    cols = results.columns(max(2, len(data.detectors)))
    for col, (name, d) in zip(cols, data.detectors.items()):
        said = band(d.score, d.threshold) if d.status == "ok" else None
        # The band is the headline; the number sits beneath it, so 0.699 is not read as "70% fake".
        col.metric(f"{STATUS_ICON.get(d.status, '')} {name}", said.capitalize() if said else score_text(d.status, d.score),
                   help=f"score {score_text(d.status, d.score)}; threshold {d.threshold}; rule {d.rule}; "
                        f"weights {d.weights_sha256}. {BAND_RULE}")
    with (details or st.container()).expander("Scope and how each detector scored"):
        caveat()
        for name, d in data.detectors.items():
            if d.status != "ok":
                st.caption(f"{name}: {d.reason or ''}")
            else:
                line = band_line(name, d.score, d.threshold)
                if line:
                    st.text(line)  # st.text: an evaluation's data set name comes from a user's file
                st.caption(f"{name}: score {d.score:.3f} · {len(d.frames_used)} frames used")
                said = score_rules(d.status, d.rule, d.upstream)
                st.caption(f"Scored by {said['headline']}")
                if said["explanation"]:
                    st.caption(f"Explanation: {said['explanation']}")
                for line in video_lines(d.upstream):
                    st.caption(line)  # st.caption renders markdown, but these lines hold no user input
                untracked = (d.upstream or {}).get("faces_without_track") or 0
                if untracked:
                    st.caption(f"{untracked} face(s) its own face finder found overlap none of the tracks: they count "
                               "in its score but are not on the timeline.")
        if review.has_ensemble(data):
            st.caption(review.ensemble_caption(data.ensemble) + f" {review.AGREEMENT_NOTE}")
    for item in review.disagreements(data):
        listed = ", ".join(f"{n} {v:.2f}" for n, v in item["scores"].items())
        st.warning(f"Detectors disagree strongly on track T{item['track']} ({listed}). {review.AGREEMENT_NOTE}")
    if review.has_ensemble(data):
        ens = data.ensemble
        line = band_line(review.ENSEMBLE, ens["score"], ens["threshold"]) if ens["status"] == "ok" else None
        if line:
            st.text(f"Ensemble: {line}")


PLAY_INTERVAL_S = 0.4
FRAME_MAX_HEIGHT = 420  # px: the frame never pushes the scrubber and the timeline below a 1000 px window
TIMELINE_HEIGHT = 300
CROP_WIDTH = 80
LANDSCAPE = 1.2  # width / height from which the frame's column (about 500 px at 1400) keeps it low enough
KEYS_WIDGET = "review_keys"
PLAY_DIRECTION = "play_direction"  # +1 forwards (Play, L, Space), -1 backwards (J)
_PLAY_DECLARED = "_play_declared"  # whether the frame view's fragment was declared with Play's timer
TRACK_FILTERS = {"top": f"top {review.TOP_TRACKS} by score", "all": "all tracks", "selected": "selected face only"}


def scrubber(sha: str, path: str, data: review.ReviewData, key: str, bar=None) -> None:
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
    c1, c2 = bar or st.columns([1, 6], vertical_alignment="center")
    c1.toggle("Play", key="play_toggle", on_change=_play_toggled, help="step through the analysed frames")
    with c2.popover("Keys", icon=":material/keyboard:"):
        st.markdown(keys.help_text())  # from keys.KEYS only: no user text
    st.session_state[_PLAY_DECLARED] = selection.playing()

    @st.fragment(run_every=PLAY_INTERVAL_S if selection.playing() else None)
    def frame_view() -> None:
        with errors.shown_plainly():
            _frame_view(sha, path, data, key, total, fps, threshold_default, choices, play_frames)

    frame_view()


# While Play runs, the page's timer asks for reruns carrying the toggle as the browser last drew it.
# One sent just after a key switched Play, before the redrawn toggle arrived, is an echo of the old
# state, not a click: it would switch Play straight back.
PLAY_ECHO_S = 2.0
_PLAY_SET = "_play_set"  # (playing, monotonic time) of the last switch by a key or the clip's end


def _set_playing(on: bool) -> None:
    """Switch Play from the server side (a key, the clip's end), remembering when, for the toggle's echo."""
    if on != selection.playing():
        st.session_state[_PLAY_SET] = (on, time.monotonic())
    selection.set_playing(on)


def _play_toggled() -> None:
    wanted = st.session_state["play_toggle"]
    last = st.session_state.get(_PLAY_SET)
    if last is not None and wanted != last[0] and time.monotonic() - last[1] < PLAY_ECHO_S:
        return  # the timer's echo of the toggle from before the key
    st.session_state[PLAY_DIRECTION] = 1
    selection.set_playing(wanted)


def _frame_view(sha: str, path: str, data: review.ReviewData, key: str, total: int, fps: float,
                threshold_default: float, choices: list[str], play_frames: list[int]) -> None:
    if selection.playing() != st.session_state.get(_PLAY_DECLARED):
        st.rerun()  # a key started or stopped Play: the whole page, to give the fragment its timer or take it away
    if selection.playing():
        backwards = st.session_state.get(PLAY_DIRECTION, 1) < 0
        nxt = (review.previous_frame if backwards else review.next_frame)(play_frames, selection.current_frame())
        if nxt is None:
            _set_playing(False)
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

    def on_key() -> None:
        pressed = keys.pressed(KEYS_WIDGET)
        if pressed is None:
            return
        action, arg = keys.ACTIONS[pressed]
        if action == "play":
            if arg:
                st.session_state[PLAY_DIRECTION] = arg
            _set_playing(bool(arg))
        elif action == "toggle":
            st.session_state[PLAY_DIRECTION] = 1
            _set_playing(not selection.playing())
        else:
            _set_playing(False)  # stepping stops Play, as in a video editor
            # The crossings at the threshold set now: a key pressed just after the slider moved
            # may run before the rerun that would have recomputed them.
            name = st.session_state.get("detector") if st.session_state.get("detector") in choices else (
                choices[0] if choices else None)
            now = st.session_state.get(f"threshold:{name}", review.threshold_for(data, name))
            at_now = review.crossings(data, name, now) if name else []
            jump(keys.frame_after(pressed, selection.current_frame(), total, step_s, at_now))

    keys.listen(KEYS_WIDGET, on_key)
    left, right = st.columns([11, 9], gap="medium")
    with left:
        frame_slot = st.container()  # the frame goes on top; it is drawn after the scrubber has moved
        # Two rows of buttons: seven in one row would clip their labels in the frame's column.
        b = st.columns(4) + st.columns([4, 4, 3], vertical_alignment="center")
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
                          key="time_s", on_change=set_time, help="jump to a time in seconds", label_visibility="collapsed")
        draw_from("frame_slider", current)
        st.slider("Frame", 0, max(0, total - 1), key="frame_slider", on_change=copy_widget,
                  args=("frame_slider", selection.select_frame), help="frame number; the time is shown below")
    selection.sync_url()  # scrubbing reruns only this fragment, not the page that mirrors the URL
    frame = current
    analysed = frame in set(data.frames_analysed)
    with resources.proxy_while_loading(sha, path, frame, where=frame_slot) as frame_slot:  # a labelled low-res preview first
        image, faces, crops = resources.frame_with_boxes(sha, path, frame, data.face_run_id, detector_name, key)
    note = "" if analysed else (" · not analysed yet" if not data.frames_analysed
                                else " · between analysed frames (boxes interpolated)")
    frame_slot.image(image, caption=f"frame {frame} · {frame / fps:.3f} s{note}", width=frame_width(image.shape))
    with left:
        loupe_ui(sha, path, frame, faces)  # under the scrubber: the frame's column has the room
    with right:
        if faces:
            cols = st.columns(max(4, min(6, len(faces))))
            for col, face, crop in zip(cols, faces, crops):
                label = f"T{face.track_id}" + (f" · {face.score:.3f}" if face.score is not None else "") + f" · {face.kind}"
                col.image(crop, caption=label, width=CROP_WIDTH)
        elif not data.frames_analysed:
            # Before any analysis no face was looked for: "no face" would deny the faces on screen.
            st.caption("Not analysed yet — run detectors to find faces.")
        else:
            st.caption("No face on this frame.")
    if selection.current_track() not in {f.track_id for f in faces}:
        selection.select_track(None)
    with left:
        review_panels.export_ui(sha, path, frame, crops, faces)
        review_panels.range_ui(sha, frame, fps)

    if choices:
        with right:
            c1, c2, c3 = st.columns([3, 2, 3])
            c1.selectbox("Timeline detector", choices, key="detector", help="the series the labels, the "
                         "track ranking and the crossings (N/P) follow")
            # One slider per detector, starting at that detector's (or the stored ensemble's) threshold.
            c2.slider("Threshold", 0.0, 1.0, value=float(threshold_default), step=0.01, key=f"threshold:{detector_name}")
            tracks = track_filter_ui(c3, data, detector_name)
            fig = review.timeline_figure(data, frame, threshold, height=TIMELINE_HEIGHT, tracks=tracks,
                                         label_series=detector_name)
            review.add_ground_truth(fig, resources.demo_truth(sha))
            review_panels.shade_ranges(fig, sha, fps)
            st.plotly_chart(fig, on_select=_seek_to_clicked_point, selection_mode="points", key="timeline", width="stretch")
            with st.expander("Score distribution against the threshold"):
                st.plotly_chart(review.score_histogram(data, detector_name, threshold), width="stretch")
                if detector_name in data.detectors:
                    threshold_note = _threshold_note(detector_name)
                    if threshold_note:
                        st.caption(threshold_note)
            review_panels.gradcam_ui(sha, path, data, frame, faces, key)
    elif data.frames_analysed:
        with right:
            # Nothing was scored (e.g. every detector inconclusive): the face band still shows where
            # faces were and were not found, which is what the analyst needs to judge why.
            st.caption("No detector scored a face on this file. The band shows, per analysed frame, where faces were "
                       "found, only tracked, or not found.")
            fig = review.timeline_figure(data, frame, height=TIMELINE_HEIGHT)
            review_panels.shade_ranges(fig, sha, fps)
            st.plotly_chart(fig, on_select=_seek_to_clicked_point, selection_mode="points", key="timeline", width="stretch")

    if choices:
        # Full width under both columns: a dozen thumbnails with their captions need the page's width.
        review_panels.filmstrip_ui(sha, path, data, detector_name, threshold)


def frame_width(shape: tuple[int, ...], max_height: int = FRAME_MAX_HEIGHT) -> int | str:
    """The frame's width on screen: "content" (its own width, narrowed by the column, never
    upscaled into blur) for a landscape frame; a portrait or square frame is narrowed further so
    it stays max_height px tall and the timeline stays in view. (A width in px is not narrowed by
    the column, so only these small ones are given in px.)"""
    h, w = shape[:2]
    bounded = max(1, int(round(max_height * w / h)))
    return bounded if w / h < LANDSCAPE and bounded < w else "content"


def track_filter_ui(where, data: review.ReviewData, detector_name: str | None) -> list[int] | None:
    """The tracks the timeline draws: the top N by score (default), all, or the selected face only."""
    n = len(data.tracks)
    options = list(TRACK_FILTERS) if n > review.TOP_TRACKS else ["all", "selected"]
    if st.session_state.get("track_filter") not in options:
        st.session_state["track_filter"] = options[0]
    chosen = where.selectbox("Tracks on the timeline", options, key="track_filter",
                             format_func=lambda o: TRACK_FILTERS[o] + (f" ({n})" if o == "all" else ""))
    if chosen == "all":
        return None
    if chosen == "selected" and selection.current_track() is not None:
        shown = review.shown_tracks(data, detector_name, selected=selection.current_track())
        where.caption(f"showing the selected face T{shown[0]} of {n} tracks")
        return shown
    shown = review.shown_tracks(data, detector_name, top=review.TOP_TRACKS)
    lead = "no face selected (pick one under Grad-CAM): " if chosen == "selected" else ""
    where.caption(f"{lead}showing {', '.join(f'T{t}' for t in shown)} of {n} tracks")
    return shown


LOUPE_SIZES = (32, 64, 128, 256)
LOUPE_MAX_PX = 480  # the frame's column is about 500 px wide at 1400 px: a loupe picture is never scaled to fit
REGION = "region"


def loupe_ui(sha: str, path: str, frame: int, faces) -> None:
    """The loupe: a face or a square region of the decoded frame at its own pixels (1:1), or 2x/4x
    nearest-neighbour; drawn only while switched on (it decodes the full frame)."""
    if not st.toggle("Loupe (1:1 pixels)", key="loupe_on", help="a face or region at the video's own pixels, "
                     "no smoothing: swaps hide in detail"):
        return
    tracks = [f.track_id for f in faces]
    if st.session_state.get("loupe_target") not in tracks + [REGION]:
        st.session_state.pop("loupe_target", None)  # that face is not on this frame: start from the first
    c1, c2 = st.columns([3, 2])
    what = c1.selectbox("Look at", tracks + [REGION], key="loupe_target",
                        format_func=lambda t: "a region (x, y, size)" if t == REGION else f"face T{t}")
    zoom = c2.segmented_control("Zoom", review.LOUPE_ZOOMS, default=1, key="loupe_zoom",
                                format_func=lambda z: f"{z}×") or 1
    rgb = resources.frame_cache(sha, path).read(frame)  # the full-resolution decode, not the boxed picture
    if what == REGION:
        h, w = rgb.shape[:2]
        # Set here, not as the boxes' value=: another file may be smaller than the last one looked at.
        for widget, limit in (("loupe_x", w - 1), ("loupe_y", h - 1)):
            st.session_state[widget] = min(st.session_state.get(widget, limit // 2), limit)
        r = st.columns(3)
        x = r[0].number_input("x", 0, max(0, w - 1), key="loupe_x")
        y = r[1].number_input("y", 0, max(0, h - 1), key="loupe_y")
        size = r[2].selectbox("size", LOUPE_SIZES, index=1, key="loupe_size")
        region = review.clamp_region(rgb.shape, x, y, size, size)
    else:
        face = next(f for f in faces if f.track_id == what)
        region = review.face_region(rgb.shape, face.box)
    asked = (region, zoom)
    region, zoom = review.loupe_fit(region, zoom, LOUPE_MAX_PX)
    view = review.loupe(rgb, region, zoom)
    x1, y1, x2, y2 = region
    fitted = "" if (region, zoom) == asked else f" (fitted to {LOUPE_MAX_PX} px: the column's width)"
    # PNG, at its own width: JPEG or a resize in the browser would blur the pixels the loupe is for.
    st.image(view, width=view.shape[1], output_format="PNG",
             caption=f"loupe · frame {frame} · x {x1}-{x2 - 1}, y {y1}-{y2 - 1} ({x2 - x1}×{y2 - y1} px) · {zoom}×{fitted}")


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


if __name__ == "__main__":  # run by st.navigation as this page's script
    review_page()
