"""The review page (a file so AppTest can switch to it; the page itself lives in workbench.ui.pages)."""
from workbench.ui.pages import review_page

review_page()
