"""The Review page's keyboard: a small st.components.v2 listener on the page that sends each key it knows to Python.

The component has no frame of its own (v2 components mount in the app's page), so it listens on
the document. It ignores a key typed into anything that takes keys itself (text and number
boxes, sliders, select boxes, buttons, checkboxes), and any key with Ctrl, Alt or Meta, so
typing a note or moving the slider never scrubs. Keys and what they do are listed once, in KEYS;
the page's "Keys" help is drawn from the same table.
"""
from __future__ import annotations

from collections.abc import Callable

import streamlit as st

# (key as the component reports it, how the help writes it, the action, its argument, what it does)
KEYS = [
    ("ArrowLeft", "←", "frames", -1, "one frame back"),
    ("ArrowRight", "→", "frames", 1, "one frame forward"),
    ("Shift+ArrowLeft", "Shift + ←", "seconds", -1, "one second back"),
    ("Shift+ArrowRight", "Shift + →", "seconds", 1, "one second forward"),
    ("j", "J", "play", -1, "play backwards"),
    ("k", "K", "play", 0, "pause"),
    ("l", "L", "play", 1, "play forwards"),
    (" ", "Space", "toggle", 1, "play / pause"),
    ("n", "N", "crossing", 1, "next threshold crossing"),
    ("p", "P", "crossing", -1, "previous threshold crossing"),
]
ACTIONS = {key: (action, arg) for key, _, action, arg, _ in KEYS}
HELP = "\n".join(f"- **{shown}**: {what}" for _, shown, _, _, what in KEYS) + (
    "\n\nKeys work while nothing that takes typing has the focus: click beside the frame first.")

# Shift+letter is the letter (upper case); Shift with an arrow is its own key. The page must not
# scroll on Space or the arrows the listener takes.
_JS = """
export default function(component) {
  const { setTriggerValue, data } = component;
  const known = new Set(data.keys);
  const takesKeys = "input, textarea, select, button, [contenteditable=''], [contenteditable='true'], "
    + "[role='slider'], [role='combobox'], [role='listbox'], [role='option'], [role='textbox'], "
    + "[role='checkbox'], [role='switch'], [role='menu'], [role='menuitem'], [role='spinbutton']";
  let count = 0;
  const onKey = (event) => {
    if (event.defaultPrevented || event.isComposing || event.ctrlKey || event.altKey || event.metaKey) return;
    const target = event.target;
    if (target && target.closest && target.closest(takesKeys)) return;
    const base = event.key.length === 1 ? event.key.toLowerCase() : event.key;
    const name = (event.shiftKey && base.startsWith("Arrow")) ? "Shift+" + base : base;
    if (!known.has(name)) return;
    event.preventDefault();
    count += 1;
    setTriggerValue("key", {key: name, n: count});
  };
  if (window.__workbenchKeys) document.removeEventListener("keydown", window.__workbenchKeys);
  window.__workbenchKeys = onKey;
  document.addEventListener("keydown", onKey);
  return () => {
    document.removeEventListener("keydown", onKey);
    if (window.__workbenchKeys === onKey) window.__workbenchKeys = null;
  };
}
"""
_listener = st.components.v2.component("workbench_review_keys", js=_JS)


def pressed(widget_key: str) -> str | None:
    """In the listener's callback: the key just pressed (as in KEYS), or None."""
    state = st.session_state.get(widget_key) or {}
    event = state.get("key") if hasattr(state, "get") else None
    key = event.get("key") if isinstance(event, dict) else None
    return key if key in ACTIONS else None


def listen(widget_key: str, on_key: Callable[[], None]) -> None:
    """Mount the listener; on_key runs (as a widget callback) on every key in KEYS; read it with pressed()."""
    _listener(key=widget_key, data={"keys": [k for k, *_ in KEYS]}, on_key_change=on_key,
              width="stretch", height="content")


def frame_after(key: str, current: int, total: int, frames_per_second: int, crossings: list[int]) -> int | None:
    """Where a moving key (arrows, N, P) takes the cursor; None for the play keys or no crossing that way.

    >>> frame_after("Shift+ArrowRight", 10, 100, 25, []), frame_after("n", 10, 100, 25, [4, 30])
    (35, 30)
    """
    action, arg = ACTIONS[key]
    if action == "frames" or action == "seconds":
        step = arg * (frames_per_second if action == "seconds" else 1)
        return max(0, min(total - 1, current + step))
    if action == "crossing":
        later = [f for f in crossings if f > current]
        earlier = [f for f in crossings if f < current]
        if arg > 0:
            return min(later) if later else None
        return max(earlier) if earlier else None
    return None


def help_text() -> str:
    """The keys and what they do, as Markdown (drawn from KEYS only: no user text)."""
    return HELP
