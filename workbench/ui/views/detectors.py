"""The detectors page (a file so AppTest can switch to it; the page itself lives in workbench.ui.pages)."""
from workbench.ui.pages import detectors_page

detectors_page()
