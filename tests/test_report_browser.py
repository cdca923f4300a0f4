"""The report opens in headless Chromium with no console errors, no failed or external
requests and no broken images (Debian package ``chromium``; skipped with the reason
printed when no browser is installed). Uses scripts/check_report_browser.py, which
speaks the DevTools protocol with the standard library only."""

import importlib.util
from pathlib import Path

import pytest

from report_helpers import run_tiny_experiment

_SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "check_report_browser.py"
_spec = importlib.util.spec_from_file_location("check_report_browser", _SCRIPT)
browser_check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(browser_check)

BROWSER = browser_check.find_browser()
if BROWSER is None:
    print("test_report_browser: no Chromium binary (chromium, chromium-browser, google-chrome) on PATH: "
          "skipping the browser check; apt-get install -y chromium")
pytestmark = pytest.mark.skipif(BROWSER is None, reason="no Chromium binary found (apt-get install -y chromium)")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return run_tiny_experiment(tmp_path_factory.getbasetemp() / "tiny-shared")


def test_report_opens_in_chromium_without_errors_or_broken_images(tiny_run, tmp_path):
    shot = tmp_path / "first_screen.png"
    res = browser_check.check_report(tiny_run / "report" / "report.html", screenshot=shot)
    assert res["errors"] == []
    assert len(res["images"]) >= 8
    assert all(i["width"] > 100 and i["height"] > 100 for i in res["images"])
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_browser_check_catches_a_broken_page(tmp_path):
    # negative control: the check must be able to fail
    bad = tmp_path / "bad.html"
    bad.write_text('<!DOCTYPE html><html><head><meta charset="utf-8"><title>bad</title></head><body>'
                   '<img src="missing.png"><script>console.error("boom")</script></body></html>')
    errors = browser_check.check_report(bad)["errors"]
    assert any("console.error: boom" in e for e in errors)
    assert any("broken image" in e for e in errors)
    assert any("missing.png" in e and "self-contained" in e for e in errors)
