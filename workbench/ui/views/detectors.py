"""The Detectors page: every model card, weight status, install hints and the latest bias evaluation."""
from __future__ import annotations

import streamlit as st

from detectors.base import CARD_FIELDS
from detectors.registry import get_detector, list_detectors
from workbench.ui import resources
from workbench.ui.common import caveat

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


if __name__ == "__main__":  # run by st.navigation as this page's script
    detectors_page()
