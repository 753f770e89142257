"""The about page (a file so AppTest can switch to it; the page itself lives in workbench.ui.pages)."""
from workbench.ui.pages import about_page

about_page()
