"""Look at a Ray dashboard in headless Chromium (Debian's `chromium` and `chromium-driver`, driven by
Selenium; nothing is downloaded at run time), logged in with the cluster's token.

Used by tests/test_ray_native.py, whose run also writes the README's screenshot:
    POSECTL_SCREENSHOTS=docs/img python -m pytest tests/test_ray_native.py -k browser
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path

CHROMIUM = ("chromium", "chromium-browser", "google-chrome")
DRIVER = ("chromedriver", "chromium-driver")


def browser_missing() -> str | None:
    """Why no browser test can run here (None when it can)."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    if not any(shutil.which(b) for b in CHROMIUM):
        return "no chromium on PATH (Debian: apt-get install chromium chromium-driver)"
    if not any(shutil.which(d) for d in DRIVER):
        return "no chromedriver on PATH (Debian: apt-get install chromium-driver)"
    return None


def open_dashboard(url: str, token: str | None):
    """A headless Chromium on the dashboard at `url`, logged in as a user does: the token typed into the
    dashboard's "Authentication Token" dialog and submitted (it sets the session cookie through
    POST /api/authenticate, ray/dashboard/http_server_head.py)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    opts = webdriver.ChromeOptions()
    opts.binary_location = next(shutil.which(b) for b in CHROMIUM if shutil.which(b))
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1400,900"):
        opts.add_argument(a)
    driver = webdriver.Chrome(service=Service(next(shutil.which(d) for d in DRIVER if shutil.which(d))), options=opts)
    driver.set_page_load_timeout(60)
    driver.get(url)
    if token:
        login(driver, token)
    return driver


def login(driver, token: str, tries: int = 30) -> None:
    from selenium.webdriver.common.by import By
    for _ in range(tries):                     # the dialog appears once the page has asked for the auth mode
        dialog = driver.find_elements(By.CSS_SELECTOR, "[role=dialog]")
        scope = dialog[0] if dialog else driver
        fields = [f for f in scope.find_elements(By.TAG_NAME, "input") if f.is_displayed() and f.is_enabled()]
        buttons = [b for b in scope.find_elements(By.TAG_NAME, "button") if b.text.strip().lower() == "submit"]
        if fields and buttons:
            fields[0].send_keys(token)
            buttons[0].click()
            break
        time.sleep(1)
    else:
        raise AssertionError("the dashboard showed no token dialog")
    for _ in range(tries):
        if "Authentication Token Required" not in driver.find_element(By.TAG_NAME, "body").text:
            return
        time.sleep(1)
    raise AssertionError("the dashboard did not accept the token")


def wait_for_text(driver, url: str, texts: list[str], tries: int = 60) -> str:
    """Load `url` until the page shows every one of `texts` (the dashboard fills its tables after load);
    returns the page's visible text. A hang guard bounds the tries; nothing here asserts a duration."""
    from selenium.webdriver.common.by import By
    driver.get(url)
    body = ""
    for i in range(tries):
        body = driver.find_element(By.TAG_NAME, "body").text
        if all(t in body for t in texts):
            return body
        time.sleep(1)
        if i % 15 == 14:
            driver.refresh()
    return body


def screenshot(driver, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(out))
    return out
