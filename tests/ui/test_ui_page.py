"""The /ui page in a real headless Chromium against a real `vitserve serve --http-workers 2` (tests/ui/conftest.py).

The page must agree with the API it uses: one row per ticked model with /v1/compare's top-1, a scatter point per
evaluated model, the API's own error text for a PDF (415) and a giant image (413), keyboard-only use, and no
violation in axe-core (tests/ui/axe.min.js: axe-core 4.14.1 from npm's `axe-core` package, MPL-2.0, its licence
header kept; a test-only file injected by selenium, never served). `VITSERVE_UI_SCREENSHOT=<path>` (make
screenshot) writes the README's picture of the page.
"""

from __future__ import annotations

import io
import json
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from ui_support import BROKEN, FP32, SERVED

pytestmark = pytest.mark.timeout(600)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
AXE = HERE / "axe.min.js"
#: sklearn's first digit (a 0), 0..16 grey levels, as the demo models were trained on (export/train.py digit_png)
DIGIT_ZERO = [
    [0, 0, 5, 13, 9, 1, 0, 0], [0, 0, 13, 15, 10, 15, 5, 0], [0, 3, 15, 2, 0, 11, 8, 0], [0, 4, 12, 0, 0, 8, 8, 0],
    [0, 5, 8, 0, 0, 9, 8, 0], [0, 4, 11, 0, 1, 12, 7, 0], [0, 2, 14, 5, 10, 12, 0, 0], [0, 0, 6, 13, 10, 0, 0, 0],
]
PDF = (b"%PDF-1.4\n1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\n2 0 obj << /Type /Pages /Kids [] /Count 0 >> "
       b"endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n")
GIANT_PNG = ROOT / "tests" / "reliability" / "corpus" / "bomb_png_header_30000.png"  # header: 30000x30000 pixels


def wait_for(what: str, check: Callable[[], Any], timeout: float = 90.0) -> Any:  # generous: CI shares its cores
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("uploads")
    digit = Image.new("L", (8, 8))
    digit.putdata([min(255, v * 16) for row in DIGIT_ZERO for v in row])
    buf = io.BytesIO()
    digit.save(buf, format="PNG")
    out = {"png": folder / "digit.png", "pdf": folder / "document.pdf", "giant": folder / "giant.png"}
    out["png"].write_bytes(buf.getvalue())
    out["pdf"].write_bytes(PDF)
    out["giant"].write_bytes(GIANT_PNG.read_bytes())
    return out


@pytest.fixture(scope="module")
def page(ui_server: Any, browser: Any) -> Any:
    """The page, loaded, with its models table filled."""
    browser.get(ui_server.base_url + "/ui")
    wait_for("the models table", lambda: len(rows(browser, "#models-table tbody tr")) == len(SERVED) + 1)
    return browser


def rows(driver: Any, selector: str) -> list[Any]:
    from selenium.webdriver.common.by import By

    return list(driver.find_elements(By.CSS_SELECTOR, selector))


def upload(driver: Any, path: Path) -> None:
    """Give the file to the page's file input (what the picker does; the input's change event sends it)."""
    from selenium.webdriver.common.by import By

    driver.execute_script("document.getElementById('results').hidden = true;"  # a fresh start, and a change event
                          "document.getElementById('error').textContent = '';"  # even for the same file again
                          "document.getElementById('image-input').value = '';")
    driver.find_element(By.ID, "image-input").send_keys(str(path))


def api_compare(base_url: str, data: bytes, filename: str, content_type: str, models: list[str]) -> httpx.Response:
    return httpx.post(f"{base_url}/v1/compare", params={"models": ",".join(models), "top_k": 3},
                      files={"image": (filename, data, content_type)}, timeout=60)


def models_checked(driver: Any) -> list[str]:
    return sorted(driver.execute_script(
        "return [...document.querySelectorAll('#models-table tbody tr')]"
        ".filter(r => r.querySelector('input[type=checkbox]').checked).map(r => r.dataset.model);"))


def test_page_is_served_with_a_strict_policy_and_stays_out_of_the_api(ui_server: Any) -> None:
    for path, media in (("/ui", "text/html"), ("/ui/app.js", "text/javascript"), ("/ui/style.css", "text/css")):
        r = httpx.get(ui_server.base_url + path)
        assert r.status_code == 200 and r.headers["content-type"].startswith(media), (path, r.status_code)
        csp = r.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "script-src 'self';" in csp and "unsafe" not in csp, csp
        assert r.headers["x-content-type-options"] == "nosniff"
    html = httpx.get(ui_server.base_url + "/ui").text
    assert not re.search(r"<script(?![^>]*\bsrc=)", html), "an inline script"
    assert " style=" not in html and "https://" not in html and "http://" not in html
    assert httpx.get(ui_server.base_url + "/ui/../v1/models").status_code in (200, 404)  # normalised by the client
    assert httpx.get(ui_server.base_url + "/ui/secrets.txt").status_code == 404
    paths = httpx.get(ui_server.base_url + "/openapi.json").json()["paths"]
    assert not [p for p in paths if p.startswith("/ui")]


def test_models_table_shows_state_reason_runtime_and_precision(page: Any, ui_server: Any) -> None:
    api = {m["name"]: m for m in httpx.get(ui_server.base_url + "/v1/models").json()["models"]}
    assert api[BROKEN]["state"] == "failed" and api[BROKEN]["reason"]
    texts = {r.get_attribute("data-model"): r.text for r in rows(page, "#models-table tbody tr")}
    assert set(texts) == {*SERVED, BROKEN}
    assert "failed" in texts[BROKEN] and api[BROKEN]["reason"][:60] in texts[BROKEN]
    for name in SERVED:
        assert "ready" in texts[name] and "CPUExecutionProvider" in texts[name], texts[name]
    assert "int8" in texts["demo-int8"] and "fp16" in texts["demo-fp16"] and "fp32" in texts["demo"]
    assert "sklearn-digits@" in texts["demo"]
    assert models_checked(page) == sorted(FP32)  # the default: the fp32 models that serve


def test_png_upload_gives_a_row_per_model_with_the_apis_top1(page: Any, ui_server: Any, files: dict[str, Path]
                                                             ) -> None:
    upload(page, files["png"])
    wait_for("the results table", lambda: page.execute_script(
        "return !document.getElementById('results').hidden && "
        "document.querySelectorAll('#results tbody tr').length"))
    shown = {r.get_attribute("data-model"): r for r in rows(page, "#results tbody tr")}
    assert sorted(shown) == sorted(FP32)
    expected = api_compare(ui_server.base_url, files["png"].read_bytes(), "digit.png", "image/png", list(FP32))
    assert expected.status_code == 200, expected.text
    for entry in expected.json()["results"]:
        cell = shown[entry["model"]].find_element("css selector", "td.top1")
        assert cell.get_attribute("data-label") == entry["predictions"][0]["label"], entry["model"]
    assert page.find_elements("css selector", "#results td.best"), "no winner marked"
    assert page.find_element("id", "error").text == ""


def test_scatter_plots_show_a_point_per_evaluated_model(page: Any, ui_server: Any) -> None:
    api = httpx.get(ui_server.base_url + "/v1/models").json()["models"]
    evaluated = sorted(m["name"] for m in api if m["evaluation"])
    assert len(evaluated) >= len(SERVED)  # every committed demo model is evaluated, the failed one included

    def points(plot: str) -> list[str]:
        return sorted(page.execute_script(
            f"return [...document.querySelectorAll('#{plot} circle.point')].map(c => c.dataset.model);"))

    assert wait_for("the GFLOPs points", lambda: points("plot-flops")) == evaluated
    # latency: the evaluated models the server has observed, here the ones the image went through
    latency = wait_for("the latency points", lambda: points("plot-latency"))
    assert set(FP32) <= set(latency) <= set(evaluated), latency
    assert page.find_elements("css selector", "#plot-flops path.pareto")
    assert page.find_elements("css selector", "#plot-flops circle.point.front")
    note = page.find_element("id", "window-note").text
    assert "vitserve_compute_duration_seconds" in note and "since the server started" in note
    for name in FP32:
        cell = page.find_element("css selector", f'#models-table tr[data-model="{name}"] td[data-p50-ms]')
        assert float(cell.get_attribute("data-p50-ms")) > 0


@pytest.mark.parametrize("kind,filename,content_type,status", [
    ("pdf", "document.pdf", "application/pdf", 415),
    ("giant", "giant.png", "image/png", 413),
])
def test_refused_upload_shows_the_apis_error(page: Any, ui_server: Any, files: dict[str, Path], kind: str,
                                             filename: str, content_type: str, status: int) -> None:
    expected = api_compare(ui_server.base_url, files[kind].read_bytes(), filename, content_type, list(FP32))
    assert expected.status_code == status, expected.text
    message = expected.json()["error"]
    upload(page, files[kind])
    shown = wait_for("the error", lambda: page.find_element("id", "error").text)
    assert shown.startswith(f"{status} ") and shown.endswith(message), shown
    assert page.find_element("id", "error").get_attribute("role") == "alert"
    assert not page.find_element("id", "results").is_displayed()


def test_keyboard_only(page: Any, ui_server: Any, files: dict[str, Path]) -> None:
    """Tab reaches the file picker, the options, every checkbox and every sort button; Space ticks, Enter sorts."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    page.refresh()
    wait_for("the models table", lambda: len(rows(page, "#models-table tbody tr")) == len(SERVED) + 1)
    page.find_element("tag name", "body").click()

    def active() -> str:
        return str(page.execute_script(
            "const a = document.activeElement; return a.id || (a.dataset && a.dataset.key ? 'sort:' + a.dataset.key"
            " : a.tagName);"))

    def tab_to(target: str, limit: int = 80) -> None:
        for _ in range(limit):
            ActionChains(page).send_keys(Keys.TAB).perform()
            if active() == target:
                return
        raise AssertionError(f"Tab never reached {target}")

    tab_to("image-input")  # a native file input: Enter or Space opens the picker; the driver plays the picker
    page.switch_to.active_element.send_keys(str(files["png"]))
    wait_for("the results", lambda: len(rows(page, "#results tbody tr")) == len(FP32))
    tab_to("top-k")
    tab_to("compare-button")
    tab_to("dataset-select")
    # a checkbox: Space ticks demo-int8, which the next image then goes through
    tab_to("select-demo-int8")
    ActionChains(page).send_keys(Keys.SPACE).perform()
    assert "demo-int8" in models_checked(page)
    # sort by GFLOPs with Enter: ascending, then descending
    page.execute_script("document.getElementById('image-input').focus();")
    tab_to("sort:flops")
    ActionChains(page).send_keys(Keys.ENTER).perform()
    assert active() == "sort:flops"  # the table was redrawn, the focus stayed
    th = page.find_element("css selector", '#models-table th[aria-sort]')
    assert th.text.startswith("GFLOPs") and th.get_attribute("aria-sort") == "ascending"
    order = [r.get_attribute("data-model") for r in rows(page, "#models-table tbody tr")]
    flops = {m["name"]: m["flops"] for m in httpx.get(ui_server.base_url + "/v1/models").json()["models"]}
    assert order == sorted(flops, key=lambda n: (flops[n] is None, flops[n] or 0, n)), order
    ActionChains(page).send_keys(Keys.ENTER).perform()
    th = page.find_element("css selector", '#models-table th[aria-sort]')
    assert th.get_attribute("aria-sort") == "descending"
    again = [r.get_attribute("data-model") for r in rows(page, "#models-table tbody tr")]
    assert again != order and set(again) == set(order)
    # Enter on the Compare button sends the picked image through the ticked models, demo-int8 now among them
    page.execute_script("document.getElementById('image-input').focus();")
    tab_to("compare-button")
    ActionChains(page).send_keys(Keys.ENTER).perform()
    wait_for("demo-int8's row", lambda: rows(page, '#results tbody tr[data-model="demo-int8"]'))


def test_accessibility_axe(page: Any, files: dict[str, Path]) -> None:
    """axe-core's WCAG 2 A/AA and best-practice rules on the page with results, plots and an error shown."""
    upload(page, files["png"])
    wait_for("the results", lambda: page.execute_script(
        "return !document.getElementById('results').hidden && document.querySelectorAll('#results tbody tr').length"))
    page.execute_script(AXE.read_text())  # through the driver, not the page: its CSP allows no other script
    page.set_script_timeout(180)
    result = page.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "axe.run(document, {runOnly: {type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', "
        "'best-practice']}}).then(r => done({violations: r.violations.map(v => ({id: v.id, help: v.help, "
        "nodes: v.nodes.map(n => n.target.join(' ')).slice(0, 5)})), passes: r.passes.map(p => p.id)}), "
        "e => done({error: String(e)}));")
    assert "error" not in result, result
    assert {"color-contrast", "label", "button-name", "image-alt"} <= set(result["passes"]), result["passes"]
    assert result["violations"] == [], json.dumps(result["violations"], indent=1)


def test_screenshot(page: Any, files: dict[str, Path], tmp_path: Path) -> None:
    """The README's picture: the page after an image went through the fp32 models (`make screenshot`)."""
    import base64

    target = Path(os.environ.get("VITSERVE_UI_SCREENSHOT") or tmp_path / "ui.png")
    page.refresh()
    wait_for("the models table", lambda: len(rows(page, "#models-table tbody tr")) == len(SERVED) + 1)
    upload(page, files["png"])
    wait_for("the results", lambda: len(rows(page, "#results tbody tr")) == len(FP32))
    wait_for("the latency points", lambda: rows(page, "#plot-latency circle.point"))
    page.execute_script("window.scrollTo(0, 0); document.activeElement.blur();")
    shot = page.execute_cdp_cmd("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(base64.b64decode(shot["data"]))
    with Image.open(target) as image:
        assert image.width >= 1000 and image.height >= 800
