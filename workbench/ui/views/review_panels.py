"""The Review page's tools beside the frame: Grad-CAM (live while scrubbing), PNG export, time ranges, the filmstrip."""
from __future__ import annotations

import streamlit as st

from explain.heatmap_view import PLACED_OPACITY, blend_at, colour_bar, fit_square, reweight
from workbench import review
from workbench.export import ExportError, export_frame
from workbench.store import StoreError
from workbench.ui import identity, resources, selection
from workbench.ui.common import caveat, copy_widget, current_case, draw_from, form_key, next_form

EXPLAIN_LIVE = "_explain_live"  # plain key: the toggle survives a page change
PANEL_PX = 224  # every Grad-CAM image is shown at this size, side by side
FILMSTRIP_LIMIT = 12
FILMSTRIP_COLUMNS = 8


# -- Grad-CAM ------------------------------------------------------------------------------------
def gradcam_ui(sha: str, path: str, data: review.ReviewData, frame: int, faces, key: str) -> None:
    """Grad-CAM of the selected face: on a click, or on every frame the analyst lands on while
    "Explain while scrubbing" is on (each (evidence, frame, track, detector) computed once, cached)."""
    st.subheader("Grad-CAM")
    # A video-level detector scores tubes and clips, not one crop: there is no crop for Grad-CAM to explain.
    video_level = [n for n, d in data.detectors.items() if (d.upstream or {}).get("kind") == "video"]
    loadable = [n for n, d in data.detectors.items() if d.status == "ok" and n not in video_level]
    if video_level:
        st.caption(f"No Grad-CAM for {', '.join(video_level)}: it judges whole videos (its authors' tubes and "
                   "clips), not one face crop at a time.")
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
    draw_from("explain_live_toggle", bool(st.session_state.get(EXPLAIN_LIVE)))
    live = st.toggle("Explain while scrubbing", key="explain_live_toggle", on_change=copy_widget,
                     args=("explain_live_toggle", _set_live),
                     help="compute the selected face's Grad-CAM on every frame you land on (once per frame, then cached)")
    if not live and st.button("Explain this face"):
        st.session_state["explain"] = (sha, frame, track, name)
    wanted = live or st.session_state.get("explain") == (sha, frame, track, name)
    if not wanted:
        return
    if live and selection.playing():
        # Play steps every PLAY_INTERVAL_S; a Grad-CAM pass can take seconds and would stall it.
        st.caption("Explain while scrubbing waits while Play is on: pause to see this frame's Grad-CAM.")
        return
    with st.spinner(f"Computing Grad-CAM for track {track} on frame {frame}…"):
        out = resources.gradcam(sha, path, frame, track, name, data.face_run_id, key)
    if out is None:
        st.caption("That face is not on this frame (or this detector cuts no crop from it).")
        return
    opacity = st.slider("Heatmap opacity", 0.0, 1.0, value=PLACED_OPACITY, step=0.05, key="gradcam_opacity",
                        help="0 shows the pixels alone, 1 the heatmap's colour alone")
    overlay = blend_at(out["model_input"], out["heatmap"], opacity)
    placed = reweight(out["frame_region"], out["placed_region"], opacity)
    a, b, c = st.columns(3)
    a.image(fit_square(out["model_input"], PANEL_PX), caption="exact input the model saw (before normalisation)",
            width="stretch")
    b.image(fit_square(overlay, PANEL_PX),
            caption=f"Grad-CAM · frame {frame} · track {track} · {name} score {out['score']:.3f}", width="stretch")
    c.image(fit_square(placed, PANEL_PX), caption="in place on the frame (around the face)", width="stretch")
    st.image(colour_bar(3 * PANEL_PX), caption="colour scale: 0 (blue) = no pull towards 'manipulated', "
                                               "1 (red) = the strongest pull on this crop (scaled per crop)")
    caveat()


def _set_live(on: bool) -> None:
    st.session_state[EXPLAIN_LIVE] = bool(on)


# -- export --------------------------------------------------------------------------------------
_EXPORTED = "_exported_pngs"


def export_ui(sha: str, path: str, frame: int, crops: list, faces: list) -> None:
    """Export the frame (as decoded) and its face crops as PNGs carrying their provenance; audited."""
    if st.button("Export frame + faces as PNG", help="PNG files whose metadata holds the frame, time, evidence "
                 "sha256, case, analyst and tool version; the export is recorded in the audit trail"):
        who = identity.refuse_write()
        if who is not None:
            case = current_case()
            try:
                rgb = resources.frame_cache(sha, path).read(frame)
                files = export_frame(resources.store(), who, case["id"], sha, frame, rgb,
                                     [(f.track_id, crop) for f, crop in zip(faces, crops)])
            except (ExportError, StoreError) as exc:
                st.error(f"Not exported. {exc}")
            else:
                labels = ["Download frame PNG"] + [f"Download T{f.track_id} crop PNG" for f in faces]
                st.session_state[_EXPORTED] = (sha, frame, list(zip(labels, files)))
    done = st.session_state.get(_EXPORTED)
    if not done or done[:2] != (sha, frame):
        return
    st.caption(f"Exported and recorded in the audit trail: {', '.join(png.file_name for _, png in done[2])}")
    cols = st.columns(min(4, len(done[2])))
    for i, (label, png) in enumerate(done[2]):
        cols[i % len(cols)].download_button(label, png.data, file_name=png.file_name, mime="image/png",
                                            key=f"download-{png.file_name}", on_click="ignore")


# -- time ranges ---------------------------------------------------------------------------------
def range_text(first: int, last: int, fps: float) -> str:
    """A range as the Notes page and the Review page write it: "frames a–b (t1–t2 s)"."""
    return f"frames {first}–{last} ({first / fps:.2f}–{last / fps:.2f} s)"


def range_ui(sha: str, frame: int, fps: float) -> None:
    """Mark in and out points on this file and pin a note to the range."""
    start, end = selection.range_marks(sha)
    cols = st.columns([2, 2, 2.4, 3])  # wide enough for "Clear range" in the frame's column
    cols[0].button("Mark in", key="range_in", on_click=selection.mark, args=(sha, "in", frame),
                   help="this frame starts the range")
    cols[1].button("Mark out", key="range_out", on_click=selection.mark, args=(sha, "out", frame),
                   help="this frame ends the range")
    cols[2].button("Clear range", key="range_clear", on_click=selection.clear_range, disabled=start is None and end is None)
    marked = selection.marked_range(sha)
    if marked is None:
        cols[3].caption("Range: " + ("none marked" if start is None and end is None
                                     else f"in {start if start is not None else '–'} · out {end if end is not None else '–'}"))
        return
    cols[3].caption("Range: " + range_text(*marked, fps))
    saved = st.session_state.pop(_RANGE_NOTE_SAVED, None)
    if saved:
        next_form("range_note")  # emptied once saved; a refused note keeps its text
        st.success(saved)
    with st.form("range_note"):
        text = st.text_input(f"Note on {range_text(*marked, fps)}", key=form_key("range_note", "range_note_text"))
        if st.form_submit_button("Save range note") and (who := identity.refuse_write()) is not None:
            case = current_case()
            try:
                note_id = resources.store().add_note(case["id"], text, who, sha256=sha, frame=marked[0],
                                                     time_s=marked[0] / fps, frame_end=marked[1],
                                                     time_end_s=marked[1] / fps)
            except StoreError as exc:
                st.error(f"Not recorded. {exc}")
            else:
                st.session_state[_RANGE_NOTE_SAVED] = f"Note {note_id} pinned to {range_text(*marked, fps)}."
                st.rerun()


_RANGE_NOTE_SAVED = "_range_note_saved"


def range_note_ranges(sha: str) -> list[tuple[int, int, str]]:
    """The ranges to shade on this file's timeline: its notes' ranges, and the range being marked."""
    case = current_case()
    out = [(n["frame"], n["frame_end"], f"note {n['note_id']}") for n in resources.store().notes(case["id"])
           if n["sha256"] == sha and n["frame"] is not None and n["frame_end"] is not None] if case else []
    marked = selection.marked_range(sha)
    if marked is not None:
        out.append((marked[0], marked[1], "marked"))
    return out


def shade_ranges(fig, sha: str, fps: float):
    """The timeline with this file's note ranges and the marked range shaded."""
    return review.shade_ranges(fig, range_note_ranges(sha), fps)


# -- filmstrip -----------------------------------------------------------------------------------
def filmstrip_ui(sha: str, path: str, data: review.ReviewData, detector: str | None, threshold: float | None) -> None:
    """Thumbnails of the analysed frames, bordered by the band of their highest face score; a click seeks."""
    strip = review.filmstrip(data, detector, threshold, FILMSTRIP_LIMIT)
    if not strip:
        return
    with st.expander(f"Filmstrip: {len(strip)} of {len(data.frames_analysed)} analysed frames", expanded=True):
        st.caption("Border: red flagged, amber uncertain, green not flagged, grey no face scored "
                   f"({detector or 'no detector'} at threshold {threshold:.2f})." if threshold is not None else
                   "Border: grey, no face scored.")
        current = selection.current_frame()
        for row in range(0, len(strip), FILMSTRIP_COLUMNS):
            cols = st.columns(FILMSTRIP_COLUMNS)
            for col, item in zip(cols, strip[row : row + FILMSTRIP_COLUMNS]):
                frame = item["frame"]
                thumb = review.bordered_thumbnail(resources.thumbnail(sha, path, frame), item["colour"],
                                                  width=resources.THUMBNAIL_WIDTH)
                said = item["band"] or "no score"
                score = f" {item['score']:.2f}" if item["score"] is not None else ""
                col.image(thumb, caption=f"{frame / data.fps:.2f} s · {said}{score}")
                col.button(f"{'▶ ' if frame == current else ''}frame {frame}", key=f"film-{frame}",
                           on_click=selection.select_frame, args=(frame,), width="stretch",
                           help=f"seek to frame {frame}")
