"""The Detectors page: every model card, weight status, install hints and the latest evaluation of each detector and the ensemble."""
from __future__ import annotations

import streamlit as st

from detectors.base import CARD_FIELDS
from detectors.registry import get_detector, list_detectors
from workbench.bias_report import summary_lines
from workbench.ui import resources
from workbench.ui.common import caveat


def evaluation_ui(name: str) -> None:
    """The latest evaluation of a detector ("ensemble" for the ensemble), as plain text."""
    latest = resources.store().latest_evaluation(name)
    if latest is None:
        st.text("Evaluation: not run on this installation (python -m workbench evaluate --labels LABELS.csv).")
        return
    section = latest["result"]
    st.markdown("**Latest evaluation**")
    # Data set names and group labels come from a user's files: shown with st.text, never as markdown.
    st.text(f"{latest['created_at'][:19].replace('T', ' ')} UTC · data set {latest['dataset']} · "
            f"{latest['videos']} files · labels sha256 {latest['labels_sha256'][:16]}… · evaluation {latest['evaluation_id']}")
    if section.get("members") is not None:
        st.text(f"rule {section.get('rule')} over {', '.join(section['members'])}")
    st.text("\n".join(summary_lines(section)))
    for column, rates in section["columns"].items():
        gap = rates["equalised_odds_gap"]
        st.text(f"{column}: equalised-odds gap {'n/a' if gap is None else f'{gap:.3f}'}; "
                + ", ".join(f"{g}: FPR {'n/a' if r['fpr']['value'] is None else format(r['fpr']['value'], '.3f')}"
                            f"{' (too few)' if r['warnings'] else ''}" for g, r in rates["groups"].items()))


def download_size(weights) -> str:
    """The expected download size of a detector's weight files from their manifest rows, when every row gives it."""
    sizes = [w.size for w in weights]
    if not sizes:
        return "none"
    if any(size is None for size in sizes):
        return "not published"
    total = sum(sizes)
    return f"{total / 1e6:.1f} MB" if total >= 1e5 else f"{total / 1e3:.1f} kB"


def status_rows() -> list[dict]:
    """One row per detector, default detectors first: installed or not, and what installing would download."""
    rows = []
    for name in list_detectors():
        det = get_detector(name)
        rows.append({"detector": name, "default": "yes" if det.default else "",
                     "kind": "video-level" if det.kind == "video" else "per face crop",
                     "installed": "yes" if det.weights_status().installed else "no",
                     "download size": download_size(det.weights), "threshold": f"{det.threshold:.3f}"})
    return sorted(rows, key=lambda r: (r["default"] != "yes", r["detector"]))


def detectors_page() -> None:
    st.title("Detectors")
    caveat()
    st.dataframe(status_rows(), hide_index=True, key="detector_status")
    for name in list_detectors():
        det = get_detector(name)
        status = det.weights_status()
        card = det.card
        with st.container(border=True):
            st.subheader(f"{name} v{det.version}" + ("  (default)" if det.default else ""))
            st.text(f"weights: {status.detail}")
            if not status.installed:
                st.code(det.install_hint or f"python -m workbench weights install {name}", language="bash")
            if det.kind == "video":
                st.text(f"video-level: reads the frames its authors read, finds faces their way and judges tubes, "
                        f"windows or clips; no Grad-CAM; threshold {det.threshold:.3f}")
                st.text(f"authors' video rule: {det.upstream_rule}")
            else:
                st.text(f"input {det.crop.size}px, margin {det.crop.margin}, frames: {det.sampling.kind}; "
                        f"threshold {det.threshold:.3f}")
            if det.threshold_note():
                st.text(det.threshold_note())
            evaluation_ui(name)
            for label, key in CARD_FIELDS:
                st.markdown(f"**{label}**")
                st.text(getattr(card, key))
    with st.container(border=True):
        st.subheader("Ensemble")
        st.text("The ensemble each analysis stores: its rule over the detectors whose status is ok, "
                "judged against the mean of their operating thresholds.")
        evaluation_ui("ensemble")


if __name__ == "__main__":  # run by st.navigation as this page's script
    detectors_page()
