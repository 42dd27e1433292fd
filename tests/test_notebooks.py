"""examples/ as a scientist uses it: the quickstart notebook executed in a real Jupyter kernel
(the library, a progress bar, a plot, the manifest, the flow with its temporary Prefect API),
the progress bar on a terminal, and the sample vak config read by ``spectroflow run --config``.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path

import nbformat
import psutil
import pytest
from nbclient import NotebookClient
from rich.console import Console
from typer.testing import CliRunner

import spectroflow
from spectroflow import progress, vakconfig
from spectroflow.cli import app

from conftest import DATA, WAVS

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
GY6OR6 = sorted((DATA / "gy6or6" / "032312").glob("*.cbin"))
#: A finished row of the bar, as its plain text shows it: ``spectrograms ━━━━ 6/6 ...``.
FINISHED_ROW = r"spectrograms\s+━+\s+{n}/{n}\b"
ANSI = re.compile(r"\x1b\[[0-9;]*m")
#: The kernel spec the notebook runs in: this interpreter's.
KERNEL = "spectroflow-test"


def outputs_of(cell) -> str:
    """A cell's outputs as text: streams, and the plain text of results and displays."""
    parts = []
    for output in cell.get("outputs", []):
        if output.output_type == "stream":
            parts.append(output.text)
        elif output.output_type in ("display_data", "execute_result"):
            parts.append(output.data.get("text/plain", ""))
    return "".join(parts)


def bars_of(cell) -> list[dict]:
    """The progress bars a cell displayed (each updated in place: one output per bar)."""
    return [output.data for output in cell.get("outputs", [])
            if output.output_type == "display_data"
            and ANSI.sub("", output.data.get("text/plain", "")).startswith("spectrograms ")]


@dataclass
class Executed:
    """The quickstart notebook after a run in a kernel, and the processes the kernel started."""

    nb: nbformat.NotebookNode
    folder: Path
    started: list[list[str]]
    left_running: list[list[str]]

    def cell(self, cell_id: str) -> nbformat.NotebookNode:
        return next(cell for cell in self.nb.cells if cell.id == cell_id)


@pytest.fixture(scope="module")
def executed(tmp_path_factory) -> Executed:
    """The notebook as a scientist runs it, top to bottom, in a new kernel of this interpreter
    (its own kernel spec: the machine's ``python3`` may be another Python) whose folder is a
    temporary one, then shut down as Jupyter does (a shutdown request, SIGTERM after 2.5 s)."""
    from ipykernel.kernelspec import write_kernel_spec

    folder = tmp_path_factory.mktemp("quickstart")
    write_kernel_spec(str(folder / "jupyter" / "kernels" / KERNEL),
                      overrides={"display_name": KERNEL})
    nb = nbformat.read(EXAMPLES / "quickstart.ipynb", as_version=4)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("JUPYTER_PATH", str(folder / "jupyter"))
        # jupyter_core warns about its old paths, unless told to use the new ones.
        env.setenv("JUPYTER_PLATFORM_DIRS", "1")
        # The notebook finds the sample data as the flows do; a fresh Prefect home.
        env.setenv("SPECTROFLOW_SAMPLE_DATA", str(DATA))
        env.setenv("PREFECT_HOME", str(folder / "prefect-home"))
        env.delenv("PREFECT_API_URL", raising=False)
        env.delenv("MPLBACKEND", raising=False)
        client = NotebookClient(nb, kernel_name=KERNEL, timeout=240,
                                resources={"metadata": {"path": str(folder)}})
        client.reset_execution_trackers()
        with client.setup_kernel():
            for index, cell in enumerate(nb.cells):
                client.execute_cell(cell, index)
            assert client.km is not None
            kernel = psutil.Process(client.km.provisioner.pid)  # type: ignore[attr-defined]
            started = kernel.children(recursive=True)
            commands = [p.cmdline() for p in started]
    _, alive = psutil.wait_procs(started, timeout=10)
    left_running = [p.cmdline() for p in alive]
    for process in alive:  # ours: started by the test's kernel
        process.kill()
    return Executed(nb, folder, commands, left_running)


def test_the_quickstart_notebook_runs_in_a_jupyter_kernel(executed):
    """The library's worker processes and the flow's Dask workers start from a kernel (spawn
    re-imports the kernel's ``__main__``); each run's bar is one output, updated in place to its
    final state; the plot, the manifest and the flow's summary are there, and no error."""
    nb = executed.nb
    assert not [o for cell in nb.cells for o in cell.get("outputs", []) if o.output_type == "error"]
    shown = "".join(outputs_of(cell) for cell in nb.cells)
    assert not re.search(r"Traceback|Error|Warning|WARNING|CRITICAL|ipywidgets", shown), shown

    out = executed.folder / "quickstart-output"
    library, flow = out / "library", out / "flow"
    assert len(list((library / "032312").glob("*.cbin.spect.npz"))) == len(GY6OR6) == 6
    assert len(list((flow / "032312").glob("*.cbin.spect.npz"))) == 6

    for name in ("make-spectrograms", "run-the-flow"):
        bars = bars_of(executed.cell(name))
        assert len(bars) == 1, outputs_of(executed.cell(name))
        assert re.search(FINISHED_ROW.format(n=6), bars[0]["text/plain"]), bars[0]["text/plain"]
        assert "\x1b" not in bars[0]["text/plain"]
        assert "<pre" in bars[0]["text/html"] and "6/6" in bars[0]["text/html"]
    assert "{'written': 6}" in outputs_of(executed.cell("make-spectrograms"))
    assert len(re.findall(r"\.cbin\.spect\.npz'", outputs_of(executed.cell("vak-function")))) == 6

    assert any("image/png" in o.get("data", {}) for o in executed.cell("plot-one").outputs)
    manifest = executed.cell("read-the-manifest")
    assert any("text/html" in o.get("data", {}) for o in manifest.outputs)
    assert len(re.findall(r"\bok\b", outputs_of(manifest))) == 6, outputs_of(manifest)
    summary = outputs_of(executed.cell("run-the-flow"))
    assert "'counts': {'written': 6}" in summary, summary
    assert str(flow / "spectroflow-manifest.csv") in summary


def test_the_kernel_leaves_nothing_running_when_it_shuts_down(executed):
    """Worker processes, Dask's, and the temporary Prefect API end with the kernel."""
    assert any("prefect.server.api.server:create_app" in " ".join(command)
               for command in executed.started), executed.started
    assert not executed.left_running


def test_the_bar_shows_each_run_of_its_block_on_a_terminal(tmp_path):
    shown = io.StringIO()
    console = Console(file=shown, force_terminal=True, color_system=None, width=100)
    with progress.bar(console=console):
        spectroflow.run("wav", None, str(tmp_path / "a"), audio_files=[str(w) for w in WAVS[:3]],
                        num_workers=2, batch_size=1, scheduler="threads")
        spectroflow.run("wav", None, str(tmp_path / "b"), audio_files=[str(w) for w in WAVS[:2]],
                        scheduler="synchronous")
    final = shown.getvalue()
    assert re.search(FINISHED_ROW.format(n=3), final), final
    assert re.search(FINISHED_ROW.format(n=2), final), final
    assert not progress.listening(), "the bar stops listening when its block ends"


def test_the_bar_outside_a_terminal_prints_the_final_state_once(tmp_path):
    """A log file or a pipe gets no redrawing: the bar's final state, once."""
    shown = io.StringIO()
    with progress.bar(console=Console(file=shown, width=100)):
        spectroflow.run("wav", None, str(tmp_path), audio_files=[str(w) for w in WAVS[:2]],
                        scheduler="synchronous")
    assert len(re.findall(FINISHED_ROW.format(n=2), shown.getvalue())) == 1, shown.getvalue()
    assert "\x1b" not in shown.getvalue()


@pytest.mark.usefixtures("console_level_restored")
def test_the_sample_vak_config_plans_the_six_sample_recordings(monkeypatch):
    """The README says to run it from the repository's root, where its relative data_dir is the
    sample data (vak and spectroflow take relative paths against the current folder)."""
    if DATA.resolve() != (REPO.parent / "shared" / "data").resolve():
        pytest.skip(f"the sample data is at {DATA}, not ../shared/data, where the example looks")
    monkeypatch.chdir(REPO)
    cfg = vakconfig.load("examples/vak-config.toml")
    assert Path(cfg.data_dir or "").resolve() == (DATA / "gy6or6" / "032312").resolve()
    assert (cfg.audio_format, cfg.annot_format, cfg.labelset) == ("cbin", "notmat", "iabcdefghjk")
    params = cfg.spect_params
    assert (params.fft_size, params.step_size, params.freq_cutoffs, params.thresh,
            params.transform_type) == (512, 64, (500.0, 10000.0), 6.25, "log_spect")

    result = CliRunner().invoke(app, ["run", "--config", "examples/vak-config.toml", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "dry run, nothing computed or written: 6 to compute" in result.output
    assert not Path(cfg.output_dir or "").exists(), "a dry run writes nothing"


def test_the_sample_vak_configs_spectroflow_table_is_accepted_when_uncommented(tmp_path):
    """The commented ``[spectroflow]`` table shows options spectroflow accepts."""
    text = (EXAMPLES / "vak-config.toml").read_text()
    table = re.search(r"^# \[spectroflow\]\n((?:#.*\n)+)", text, re.MULTILINE)
    assert table, "a commented [spectroflow] table"
    uncommented = re.sub(r"^# ?(\w+ = .*)$", r"\1", table.group(1), flags=re.MULTILINE)
    config = tmp_path / "config.toml"
    config.write_text(text + "\n[spectroflow]\n" + uncommented)
    params = vakconfig.load(config).spect_params
    assert (params.output_format, params.output_dtype) != ("npz", "float64")
