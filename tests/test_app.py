"""The Streamlit app through AppTest (no browser)."""
from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from workbench import demo

APP = str(Path(__file__).resolve().parent.parent / "workbench" / "ui" / "app.py")


@pytest.fixture
def app_home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("WORKBENCH_HOME", str(home))
    (home / "demo").mkdir(parents=True)
    demo.make_demo(home / "demo" / "demo.mp4", seconds=1.0, width=320, height=240)
    return home


def test_fresh_install_opens_on_the_demo_case(app_home):
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert not at.exception
    texts = " ".join(t.value for t in at.text) + " ".join(c.value for c in at.caption)
    assert "Demo: synthetic face swap" in " ".join(s.value for s in at.subheader)
    assert "face-swap" in texts.lower()
    at.slider[0].set_value(5).run()
    assert not at.exception
    assert at.slider[0].value == 5
