"""gencc serve's web page in a real browser (issue 16): Playwright drives Debian's Chromium against a real
`gencc serve` process serving a compiled digits diffusion model.

The page's element ids and its body's data-state / data-frames attributes are the contract
(serve/static/index.html's header comment). Playwright never downloads a browser here: it launches the
system's `chromium` (CI installs it, .ci/run), and the test skips, saying why, when either is missing.
"""
import shutil

import numpy as np
import pytest

from serve_helpers import gencc_serve

pytestmark = pytest.mark.slow

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
STEPS, N, SEED = 200, 16, 7
LONG_STEPS = 100_000   # minutes of sampling: a job that is surely still running when the test cancels it
WAIT_MS = 60_000

# Records every value the progress bar takes: setting <progress>.value sets its `value` attribute.
RECORD_PROGRESS = """() => {
  window.__progress = [];
  new MutationObserver(() => window.__progress.push(+document.getElementById("progress").value))
    .observe(document.getElementById("progress"), {attributes: true, attributeFilter: ["value"]});
}"""


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="the browser test needs the `playwright` package "
                                                                "(pip install -e '.[serve]')")
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("the browser test needs Debian's Chromium on PATH (apt-get install -y chromium; .ci/run does)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
def server(tiny_digits_artifact, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve-browser") / "server.log"
    with gencc_serve(f"digits={tiny_digits_artifact}", "--max-steps", LONG_STEPS, log=log) as (base, _):
        yield base


@pytest.fixture
def page(browser, server):
    context = browser.new_context(accept_downloads=True, viewport={"width": 1100, "height": 800})
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(server + "/")
    page.wait_for_selector("#status:has-text('ready')", timeout=WAIT_MS)
    yield page
    context.close()
    assert not errors, f"the page raised: {errors}"


def fill(page, steps: int, n: int, seed: int) -> None:
    page.fill("#steps", str(steps))
    page.fill("#n", str(n))
    page.fill("#seed", str(seed))


def test_generate_shows_progress_previews_the_final_image_and_downloads(page, tiny_digits_artifact, tmp_path):
    import gencc

    assert page.locator("#model").input_value() == "digits"
    assert page.locator("#sampler").input_value() == "em"
    fill(page, STEPS, N, SEED)
    page.evaluate(RECORD_PROGRESS)
    page.click("#generate")
    page.wait_for_selector("body[data-state='done']", timeout=WAIT_MS)

    seen = page.evaluate("window.__progress")
    steps_seen = sorted({v for v in seen if 0 < v <= STEPS})
    assert len(steps_seen) >= 3 and steps_seen[-1] == STEPS, f"progress values seen: {seen}"
    assert seen == sorted(seen), f"progress went backwards: {seen}"
    # A preview every 10 steps, then the final samples: the frame count only grows, so >= 2 is robust.
    assert int(page.locator("body").get_attribute("data-frames")) >= 2
    assert "done" in page.locator("#status").inner_text()

    frame = page.locator("#frame")
    assert frame.is_visible() and frame.get_attribute("src").startswith("blob:")
    size = page.evaluate("() => { const f = document.getElementById('frame');"
                         " return f.complete ? [f.naturalWidth, f.naturalHeight] : null; }")
    assert size is not None and min(size) > 0, size

    got = {}
    for kind in ("npy", "png"):
        link = page.locator(f"#download-{kind}")
        assert link.is_visible()
        with page.expect_download() as info:
            link.click()
        got[kind] = tmp_path / info.value.suggested_filename
        info.value.save_as(got[kind])
    assert got["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    samples = np.load(got["npy"], allow_pickle=False)
    solo = gencc.load(tiny_digits_artifact, require_signature=False).sample(N, steps=STEPS, seed=SEED)
    assert np.array_equal(samples, solo), "the page's download differs from the same request sampled in-process"

    shot = tmp_path / "gencc-serve-done.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.read_bytes()[:4] == b"\x89PNG"


def test_cancel_stops_a_long_job_and_the_page_says_cancelled(page, server, tmp_path):
    import httpx

    fill(page, LONG_STEPS, 1, 1)
    page.click("#generate")
    page.wait_for_selector("body[data-state='running']", timeout=WAIT_MS)
    page.wait_for_function("document.getElementById('progress').value >= 20", timeout=WAIT_MS)
    assert page.locator("#cancel").is_enabled() and page.locator("#generate").is_disabled()
    page.click("#cancel")
    page.wait_for_selector("body[data-state='cancelled']", timeout=WAIT_MS)

    assert page.locator("#progress").evaluate("p => p.value") < LONG_STEPS
    assert page.locator("#generate").is_enabled() and page.locator("#cancel").is_disabled()
    assert page.locator("#download-npy").is_hidden() and page.locator("#download-png").is_hidden()
    # The server agrees: no job is left running, one was cancelled.
    metrics = httpx.get(server + "/metrics").text
    assert 'gencc_jobs{state="running"} 0.0' in metrics.splitlines()
    cancelled = [ln for ln in metrics.splitlines() if ln.startswith('gencc_jobs_finished_total{state="cancelled"}')]
    assert cancelled and float(cancelled[0].split()[-1]) >= 1, cancelled
    page.screenshot(path=str(tmp_path / "gencc-serve-cancelled.png"), full_page=True)
