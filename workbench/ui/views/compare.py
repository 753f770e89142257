"""The Compare page: two evidence files side by side on one time cursor, each with its own frame offset."""
from __future__ import annotations

import streamlit as st

from workbench import review
from workbench.aggregate import band
from workbench.evidence import display_name
from workbench.ui import errors, resources, selection
from workbench.ui.common import caveat, copy_widget, current_case, draw_from

SIDES = ("A", "B")
# Plain session keys (see selection.py): a page change drops widget keys, not these.
TIME = "cmp_time_s"


def _key(side: str, what: str) -> str:
    return f"cmp_{side}_{what}"


def compare_page() -> None:
    st.title("Compare")
    caveat()
    store = resources.store()
    cases = store.cases()
    case = current_case()
    if case is None:
        st.info("Create a case first.")
        return
    st.caption("Two videos (an original and a suspect) on one time cursor. Each side's offset moves it by whole "
               "frames, to line up clips that start at different moments.")
    cols = st.columns(2)
    picked = {}
    for col, side in zip(cols, SIDES):
        with col:
            picked[side] = _pick_evidence(store, cases, case, side)
    if any(e is None for e in picked.values()):
        st.info("Both sides need an evidence file: add a video to a case on the Cases page.")
        return
    viewer(picked)


def _set(key: str):
    def setter(value) -> None:
        st.session_state[key] = value
    return setter


def _pick_evidence(store, cases: list[dict], current: dict, side: str) -> dict | None:
    """A case and one of its files for one side; returns the evidence row (None if the case has none)."""
    case_key, sha_key = _key(side, "case"), _key(side, "sha")
    ids = [c["id"] for c in cases]
    if st.session_state.get(case_key) not in ids:
        st.session_state[case_key] = current["id"]
    names = {c["id"]: f"#{c['id']} {c['name']}" for c in cases}
    draw_from(f"{case_key}_w", st.session_state[case_key])
    case_id = st.selectbox(f"{side}: case", ids, key=f"{case_key}_w", format_func=names.get,
                           on_change=copy_widget, args=(f"{case_key}_w", _set(case_key)))
    items = store.case_evidence(case_id)
    if not items:
        st.caption("This case has no evidence yet.")
        return None
    shas = [e["sha256"] for e in items]
    if st.session_state.get(sha_key) not in shas:
        # A: the file open in Review; B: the case's next file, so two different files face each other.
        chosen = st.session_state.get(selection.EVIDENCE)
        if chosen not in shas:
            chosen = shas[0]
        if side == SIDES[1] and len(shas) > 1 and chosen == st.session_state.get(_key(SIDES[0], "sha")):
            chosen = shas[(shas.index(chosen) + 1) % len(shas)]
        st.session_state[sha_key] = chosen
    label = {e["sha256"]: f"{display_name(e['original_name'])} · {e['sha256'][:12]}…" for e in items}
    draw_from(f"{sha_key}_w", st.session_state[sha_key])
    sha = st.selectbox(f"{side}: file", shas, key=f"{sha_key}_w", format_func=label.get,
                       on_change=copy_widget, args=(f"{sha_key}_w", _set(sha_key)))
    offset_key = _key(side, "offset")
    draw_from(f"{offset_key}_w", int(st.session_state.get(offset_key, 0)))
    st.number_input(f"{side}: offset (frames)", min_value=-100_000, max_value=100_000, step=1,
                    key=f"{offset_key}_w", on_change=copy_widget, args=(f"{offset_key}_w", _set(offset_key)),
                    help="shows this side this many frames later (negative: earlier) than the shared time")
    return next(e for e in items if e["sha256"] == sha)


def viewer(picked: dict[str, dict]) -> None:
    """The shared cursor and both frames; a fragment, so stepping reruns only this part."""

    @st.fragment
    def frames_view() -> None:
        with errors.shown_plainly():
            _frames_view(picked)

    frames_view()


def _frames_view(picked: dict[str, dict]) -> None:
    probes = {side: picked[side]["probe"] for side in SIDES}
    fps_a = float(probes["A"]["fps"])
    end_s = max((int(p["frames"]) - 1) / float(p["fps"]) for p in probes.values())
    now = max(0.0, min(end_s, float(st.session_state.get(TIME, 0.0))))
    st.session_state[TIME] = now

    def move(seconds: float) -> None:
        st.session_state[TIME] = max(0.0, min(end_s, st.session_state.get(TIME, 0.0) + seconds))

    b = st.columns(4)
    b[0].button("−1 s", on_click=move, args=(-1.0,), width="stretch", key="cmp_back_s")
    b[1].button("−1 frame", on_click=move, args=(-1.0 / fps_a,), width="stretch", key="cmp_back_frame",
                help="one frame of A")
    b[2].button("+1 frame", on_click=move, args=(1.0 / fps_a,), width="stretch", key="cmp_fwd_frame",
                help="one frame of A")
    b[3].button("+1 s", on_click=move, args=(1.0,), width="stretch", key="cmp_fwd_s")
    draw_from("cmp_time_w", round(now, 3))
    st.slider("Time (s)", 0.0, max(end_s, 1.0 / fps_a), step=round(1.0 / fps_a, 6), format="%.3f",
              key="cmp_time_w", on_change=copy_widget, args=("cmp_time_w", _set(TIME)),
              help="the shared time; each side shows its frame at this time plus its offset")
    difference = st.toggle("Difference view", key="cmp_difference",
                           help="the absolute per-pixel difference of the two aligned frames")

    raw = {}
    cols = st.columns(2)
    for col, side in zip(cols, SIDES):
        evidence = picked[side]
        sha, path = evidence["sha256"], evidence["stored_path"]
        fps, total = float(evidence["probe"]["fps"]), int(evidence["probe"]["frames"])
        frame = review.compare_frame(now, fps, int(st.session_state.get(_key(side, "offset"), 0)), total)
        key = resources.results_key(sha)
        data = resources.review_data(sha, None, key)
        series = review.headline_series(data)
        image, faces, _ = resources.frame_with_boxes(sha, path, frame, data.face_run_id, series, key)
        with col:
            st.image(image, caption=f"{side} · frame {frame} · {frame / fps:.3f} s", width="stretch")
            st.text(f"{display_name(evidence['original_name'])} · sha256 {sha[:12]}…")  # a client's file name: plain text
            st.text(headline_text(data))
        if difference:
            raw[side] = resources.frame_cache(sha, path).read(frame)
    if difference:
        diff, resized = review.frame_difference(raw["A"], raw["B"])
        note = " (B resized to A's size: they differ)" if resized else ""
        st.image(diff, caption=f"|A − B| per pixel{note}", width="stretch")


def headline_text(data: review.ReviewData) -> str:
    """One side's headline in words: its band at the stored threshold with the score beneath, or why there is none."""
    head = review.headline(data)
    if head is None:
        return "not analysed yet — run detectors on the Review page"
    if head["status"] != "ok" or head["score"] is None:
        return f"{head['name']}: {head['status'].upper()}" + (f" — {head['reason']}" if head["reason"] else "")
    said = band(head["score"], head["threshold"])
    if said is None:
        return f"{head['name']}: score {head['score']:.3f} (no threshold stored)"
    return f"{head['name']}: {said} (score {head['score']:.3f}, threshold {head['threshold']:.2f})"


if __name__ == "__main__":  # run by st.navigation as this page's script
    compare_page()
