"""The Prefect UI as a user sees it: a real ``prefect server`` with both of its UIs, a flow run
against it, and its pages in headless Chromium, driven over the DevTools protocol.

Checked in the pages' DOM, not in pixels: the artifacts belong to the flow run (the first UI's
run page once showed "Flow run" over "None"), the results table shows every column within the
page at 1280 px, the report's table has the CSV's rows and names the CSV, the summary's picture
has loaded, and the custom-run form of a deployment shows the flow's parameters with their
descriptions as written, ``source`` and ``destination`` required and empty. Screenshots of
every page land in the test's temporary folder, to look at.
"""

from __future__ import annotations

import base64
import itertools
import json
import re
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client

from conftest import DATA, WAVS, OutputLines, prefect_server, wait_for

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("chromium") is None,
                       reason="needs Debian's chromium (apt-get install chromium)"),
]
WIDTH, HEIGHT = 1280, 900
COLUMNS = ["source", "status", "details"]


class Browser:
    """One headless Chromium page, driven over the DevTools protocol (a websocket)."""

    def __init__(self, profile: Path):
        from websockets.sync.client import connect

        self._proc = subprocess.Popen(
            ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", f"--user-data-dir={profile}", "--remote-debugging-port=0",
             f"--window-size={WIDTH},{HEIGHT}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        # Chromium names its port on stderr once it listens; the rest is drained (and closed).
        self._stderr = OutputLines(self._proc.stderr)
        line = self._stderr.wait_for(lambda line: "DevTools listening on ws://" in line, 60)
        if line is None:
            raise RuntimeError(f"chromium did not listen:\n{self._stderr.text()}")
        found = re.search(r"DevTools listening on ws://[^/]+:(\d+)/", line)
        request = urllib.request.Request(f"http://127.0.0.1:{found.group(1)}/json/new",
                                         method="PUT")
        with urllib.request.urlopen(request, timeout=30) as resp:
            page = json.load(resp)
        self._ws = connect(page["webSocketDebuggerUrl"], max_size=None)
        self._ids = itertools.count(1)
        self.call("Page.enable")
        self.call("Emulation.setDeviceMetricsOverride", width=WIDTH, height=HEIGHT,
                  deviceScaleFactor=1, mobile=False)

    def call(self, method: str, **params) -> dict:
        ident = next(self._ids)
        self._ws.send(json.dumps({"id": ident, "method": method, "params": params}))
        while True:
            message = json.loads(self._ws.recv(timeout=60))
            if message.get("id") == ident:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]

    def js(self, expression: str):
        """The value of a JavaScript expression in the page."""
        found = self.call("Runtime.evaluate", expression=expression, returnByValue=True,
                          awaitPromise=True)
        return found["result"].get("value")

    def open(self, url: str, ready: str) -> None:
        """Go to ``url`` and wait until the expression ``ready`` holds (the page renders late)."""
        self.call("Page.navigate", url=url)
        wait_for(lambda: self.js(ready), 45, f"{url}: {ready}")

    def screenshot(self, path: Path, whole: bool = False) -> None:
        """The window, or the ``whole`` page, as a PNG (the newer UI draws its markdown again, as
        an empty placeholder, when the page is laid out for a taller window)."""
        shot = self.call("Page.captureScreenshot", captureBeyondViewport=whole)
        path.write_bytes(base64.b64decode(shot["data"]))

    def close(self) -> None:
        self._ws.close()
        self._proc.terminate()
        self._proc.wait(30)


@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    """``prefect server start`` with its UIs on a free port; yields its base URL."""
    folder = tmp_path_factory.mktemp("server")
    with prefect_server(folder, PREFECT_SERVER_UI_ENABLED="true",
                        PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT="false") as (base, _):
        yield base


@pytest.fixture(scope="module")
def flow_run(ui, tmp_path_factory):
    """A run of the flow against the server: three recordings and one that is not audio."""
    from spectroflow.flows.spectrograms import spectrogram_flow
    from spectroflow.params import DaskSettings

    audio = tmp_path_factory.mktemp("audio")
    for wav in WAVS[:3]:
        (audio / "Bird0" / "Wave").mkdir(parents=True, exist_ok=True)
        (audio / "Bird0" / "Wave" / wav.name).write_bytes(wav.read_bytes())
    (audio / "Bird0" / "Wave" / "broken.wav").write_bytes(b"not audio at all")
    state = spectrogram_flow(source=str(audio), destination=str(tmp_path_factory.mktemp("out")),
                             dask=DaskSettings(n_workers=1), return_state=True)
    assert state.is_failed() and "broken.wav" in state.message, state.message
    return state.state_details.flow_run_id


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    page = Browser(tmp_path_factory.mktemp("chromium"))
    yield page
    page.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("screenshots")


def artifacts(flow_run_id) -> dict:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    # Prefect records the persisted result as an artifact of no key and no type; the UIs hide it.
    return {a.key: a for a in found if a.key is not None}


def test_the_run_page_lists_the_artifacts_under_the_flow_run_in_both_uis(ui, flow_run, browser,
                                                                        shots):
    found = artifacts(flow_run)
    assert sorted(found) == ["spectroflow-report", "spectroflow-results", "spectroflow-summary"]
    assert all(a.task_run_id is None for a in found.values()), "the run's own, not a task's"
    assert all(a.description for a in found.values())

    browser.open(f"{ui}/runs/flow-run/{flow_run}", "!!document.getElementById('artifacts')")
    browser.js("document.getElementById('artifacts').click()")
    wait_for(lambda: browser.js(
        "document.querySelector('.flow-run-artifacts')?.innerText.includes('spectroflow-summary')"),
        45, "the first UI's artifacts tab")
    sections = browser.js(
        "document.querySelector('.flow-run-artifacts').innerText.split(/\\n(?=Task runs)/)")
    browser.screenshot(shots / "v1-run-artifacts.png")
    assert sections[0].startswith("Flow run") and "None" not in sections[0], sections
    for key in found:
        assert key in sections[0], (key, sections)

    browser.open(f"{ui}/v2/runs/flow-run/{flow_run}?tab=Artifacts",
                 "document.body.innerText.includes('spectroflow-summary')")
    main_text = "(document.querySelector('main')?.innerText ?? document.body.innerText)"
    # The list's rows render one by one: wait for the summary's description, not just its key.
    wait_for(lambda: browser.js(f"{main_text}.includes('spectroflow: summary of the run')"), 45,
             "the second UI's artifact descriptions")
    browser.screenshot(shots / "v2-run-artifacts.png")
    text = browser.js(main_text)
    assert "spectroflow: summary of the run" in text and "No description" not in text, text


#: The results table's column headers, and whether each ends within its scrolling container.
TABLE_LAYOUT = """(() => {
  const table = document.querySelector('table:has(th)');
  if (!table) return null;
  let box = table.parentElement;
  while (box && box !== document.body && getComputedStyle(box).overflowX === 'visible') {
    box = box.parentElement;
  }
  const right = Math.min(box.getBoundingClientRect().right, window.innerWidth);
  return [...table.querySelectorAll('th')].map(th =>
    [th.innerText.trim(), th.getBoundingClientRect().right <= right + 1]);
})()"""


@pytest.mark.parametrize("version", ["", "/v2"], ids=["v1", "v2"])
def test_the_results_table_shows_every_column_and_the_summary_its_picture(ui, flow_run, browser,
                                                                         shots, version):
    found = artifacts(flow_run)
    table = found["spectroflow-results"]
    browser.open(f"{ui}{version}/artifacts/artifact/{table.id}",
                 "document.querySelectorAll('table th').length > 0")
    browser.screenshot(shots / f"{version.strip('/') or 'v1'}-results.png")
    layout = browser.js(TABLE_LAYOUT)
    assert [name for name, _ in layout] == COLUMNS
    assert all(visible for _, visible in layout), layout
    rows = browser.js("[...document.querySelectorAll('table tbody tr')].map(r => r.innerText)")
    assert any(row.startswith("broken.wav") for row in rows), rows  # relative to the source
    assert any(row.startswith("0.wav") for row in rows), rows

    summary = found["spectroflow-summary"]
    browser.open(f"{ui}{version}/artifacts/artifact/{summary.id}",
                 "[...document.images].some(i => i.src.startsWith('data:image/png'))")
    loaded = wait_for(lambda: browser.js(
        "[...document.images].filter(i => i.src.startsWith('data:image/png'))"
        ".map(i => [i.complete, i.naturalWidth, i.naturalHeight, i.alt])"
        ".find(([complete, width]) => complete && width > 0)"), 30, "the preview to load")
    browser.screenshot(shots / f"{version.strip('/') or 'v1'}-summary.png")
    assert loaded[1:3] == [480, 180] and loaded[3].startswith("spectrogram of "), loaded


@pytest.mark.parametrize("version", ["", "/v2"], ids=["v1", "v2"])
def test_the_report_shows_the_csvs_rows_and_names_the_csv(ui, flow_run, browser, shots, version):
    from spectroflow.report import COLUMNS as REPORT_COLUMNS

    found = artifacts(flow_run)["spectroflow-report"]
    assert found.type == "table"
    # The newer UI draws the description (markdown) after the table.
    browser.open(f"{ui}{version}/artifacts/artifact/{found.id}",
                 "document.querySelectorAll('table tbody tr').length > 0 && "
                 "document.body.innerText.includes('spectroflow-reports/report-')")
    browser.screenshot(shots / f"{version.strip('/') or 'v1'}-report.png")
    headers = browser.js("[...document.querySelectorAll('table th')].map(th => th.innerText.trim())")
    assert headers == list(REPORT_COLUMNS)
    rows = browser.js("[...document.querySelectorAll('table tbody tr')]"
                      ".map(r => [...r.cells].map(c => c.innerText.trim()))")
    assert len(rows) == 4, rows
    broken = next(row for row in rows if row[0].endswith("/broken.wav"))
    assert broken[1] == "failed" and broken[2], broken  # the reason, in full
    written = next(row for row in rows if row[0].endswith("/0.wav"))
    assert written[1] == "written" and written[3].endswith("0.wav.spect.npz"), written
    text = browser.js("document.body.innerText")
    assert re.search(r"spectroflow-reports/report-\S+\.csv", text), "the CSV, named"
    assert "every input (4)" in text, text[:2000]


@pytest.fixture(scope="module")
def deployment(ui):
    from spectroflow.flows.spectrograms import spectrogram_flow

    return spectrogram_flow.to_deployment(name="on-demand").apply()


@pytest.mark.parametrize("version", ["", "/v2"], ids=["v1", "v2"])
def test_the_custom_run_form_shows_the_parameters_with_their_descriptions(ui, deployment, browser,
                                                                          shots, version):
    browser.open(f"{ui}{version}/deployments/deployment/{deployment}/run",
                 "document.body.innerText.includes('A prefect-aws block with the credentials')")
    browser.screenshot(shots / f"{version.strip('/') or 'v1'}-custom-run.png", whole=True)
    text = browser.js("document.body.innerText")
    for name in ("source", "destination", "audio_format", "spect_params", "storage_block",
                 "storage_secret", "dask"):
        assert name in text, name
    # The UIs mark the optional parameters; source and destination have no default to offer
    # (the sample data's path on the machine that deployed was one).
    lines = text.splitlines()
    assert "audio_format (Optional)" in lines and "storage_block (Optional)" in lines, lines
    assert "source" in lines and "destination" in lines, lines
    values = browser.js("[...document.querySelectorAll('input, textarea')].map(e => e.value)")
    assert not [v for v in values if str(DATA) in v or v == "spectrograms"], values
    # The first UI reads descriptions as markdown: placeholders must survive it.
    assert "as BLOCK-TYPE/NAME: aws-credentials/NAME" in text
    assert "concurrency-limit create TAG 2" in text
