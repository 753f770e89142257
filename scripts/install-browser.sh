#!/usr/bin/env bash
# Install Debian's Chromium for the browser end-to-end test (tests/test_browser.py) and the report's
# PDF export, and poppler-utils (pdftotext, pdfinfo), with which the report test reads the PDF back.
#
# Idempotent: does nothing when /usr/bin/chromium and pdftotext are already there. Never fails the caller:
# when Chromium cannot be installed (not root, no apt, no network) it says so and exits 0,
# and the browser test then skips with a message. It never downloads a browser build of its
# own (no `playwright install`): the test drives this Debian package through playwright's
# executable_path.
#
# Usage (as root, e.g. in .ci/run):  bash scripts/install-browser.sh
set -u

CHROMIUM=/usr/bin/chromium

if [ -x "$CHROMIUM" ] && command -v pdftotext >/dev/null 2>&1; then
    echo "install-browser: $CHROMIUM already present ($("$CHROMIUM" --version 2>/dev/null || echo 'version unknown'))."
    exit 0
fi

skip() {
    echo "install-browser: $*" >&2
    echo "install-browser: Chromium NOT installed; the browser test (tests/test_browser.py) will be skipped." >&2
    exit 0
}

if ! command -v apt-get >/dev/null 2>&1; then
    skip "apt-get not found (not a Debian-like machine)."
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO="sudo -n"
    else
        skip "not root and no passwordless sudo: run 'sudo apt-get install -y chromium' yourself."
    fi
fi

export DEBIAN_FRONTEND=noninteractive
LOG=$(mktemp -t install-browser-apt.XXXXXX.log 2>/dev/null || echo /dev/null)
# Wait for a dpkg lock held by someone else rather than failing at once; bound the whole step.
APT=(timeout 900 $SUDO apt-get -o DPkg::Lock::Timeout=120 -qq)
echo "install-browser: installing Debian's chromium (apt-get update + install; a minute or two)..."
if ! "${APT[@]}" update </dev/null >"$LOG" 2>&1; then
    tail -n 20 "$LOG" >&2
    skip "apt-get update failed (log: $LOG)."
fi
if ! "${APT[@]}" install -y --no-install-recommends chromium poppler-utils </dev/null >>"$LOG" 2>&1; then
    tail -n 20 "$LOG" >&2
    skip "apt-get install chromium failed (log: $LOG)."
fi

if [ -x "$CHROMIUM" ]; then
    echo "install-browser: installed $("$CHROMIUM" --version 2>/dev/null || echo "$CHROMIUM")."
else
    skip "apt-get reported success but $CHROMIUM is missing."
fi
exit 0
