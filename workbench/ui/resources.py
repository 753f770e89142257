"""Every st.cache_resource of the app: the store and frame readers, shared across sessions."""
from __future__ import annotations

import streamlit as st

from workbench import config
from workbench.cases import ensure_demo_case
from workbench.store import Store
from workbench.video import FrameReader


@st.cache_resource
def store() -> Store:
    s = Store(config.db_path())
    ensure_demo_case(s, config.evidence_dir())
    return s


@st.cache_resource(max_entries=8)
def frame_reader(sha256: str, path: str) -> FrameReader:
    """One open reader per evidence file (keyed by its hash), so scrubbing never reopens it."""
    return FrameReader(path)
