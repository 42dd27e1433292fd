"""Progress of a run, for whoever shows it (the command line's progress bar, :func:`bar`).

A flow calls :func:`update` as files finish; the listeners set with :func:`listen` around the
call receive ``(files done, files to compute)``. They are a context variable: runs in other
threads or contexts are not heard. Threads that report for a run (those receiving the Dask
workers' events) call the :func:`reporter` taken in the run's context. Nothing listens by
default.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress

Listener = Callable[[int, int], None]
_listeners: ContextVar[tuple[Listener, ...]] = ContextVar("spectroflow_progress", default=())


@contextmanager
def listen(listener: Listener) -> Iterator[None]:
    """Call ``listener(done, total)`` on every update while the block runs.

    Examples
    --------
    >>> seen = []
    >>> with listen(lambda done, total: seen.append((done, total))):
    ...     update(3, 10)
    >>> update(4, 10)
    >>> seen
    [(3, 10)]
    """
    token = _listeners.set((*_listeners.get(), listener))
    try:
        yield
    finally:
        _listeners.reset(token)


def reporter() -> Listener:
    """The listeners of this context as one, to call from other threads."""
    listeners = _listeners.get()

    def report(done: int, total: int) -> None:
        for listener in listeners:
            listener(done, total)

    return report


def update(done: int, total: int) -> None:
    reporter()(done, total)


def listening() -> bool:
    """Whether anyone listens (so a run can skip collecting progress nobody shows)."""
    return bool(_listeners.get())


@contextmanager
def bar(console: Console | None = None) -> Iterator[None]:
    """Show a progress bar for the runs in the block (:func:`spectroflow.run`, the flows), a row
    per run: on a terminal, redrawn in place; in a Jupyter notebook, one output updated in place
    (text and HTML, no widgets); elsewhere (a log file, a pipe), the final state once.

    ``console`` is where to draw (a :class:`rich.console.Console`); by default, standard output.

    Examples
    --------
    >>> import io
    >>> from rich.console import Console
    >>> shown = io.StringIO()
    >>> with bar(Console(file=shown, width=60)):
    ...     update(0, 3)  # a run starts, with 3 files to compute
    ...     update(3, 3)
    >>> print(shown.getvalue().strip())  # doctest: +ELLIPSIS
    spectrograms ━...━ 3/3 ... files/s 0:00:00
    """
    from rich.console import Console

    console = console or Console()
    rows = _Rows(console)
    if console.is_jupyter:
        shown = _NotebookDisplay(rows)
        try:
            with listen(shown.update):
                yield
        finally:
            shown.finish()
    else:
        with rows.progress, listen(rows.update):
            yield


class _Rows:
    """The rows of a :func:`bar`, a row per run: a run reports none done when it starts, so a
    report of none done after the last row moved or finished starts a row. Reports come from
    any thread (a flow's from the Dask client's)."""

    def __init__(self, console: Console):
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        # Finished rows show the time they took where the others show the time left.
        self.progress: Progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"), TimeRemainingColumn(elapsed_when_finished=True),
            console=console, transient=False)
        self._lock = threading.Lock()
        self._row: Any = None
        self._done = self._total = 0
        self._started = 0.0

    def update(self, done: int, total: int) -> None:
        with self._lock:
            if self._row is None or (done == 0 and (self._done > 0 or self._total == 0)):
                self._row = self.progress.add_task("spectrograms", total=total, rate="")
                self._started = time.monotonic()
            self._done, self._total = done, total
            elapsed = time.monotonic() - self._started
            rate = f"{done / elapsed:.1f} files/s" if done and elapsed > 0 else ""
            self.progress.update(self._row, completed=done, total=total, rate=rate)


class _NotebookDisplay:
    """The rows as one notebook output, text and HTML, updated in place through its display id
    (rich's own live display in Jupyter needs ipywidgets, and without them shows nothing), at
    most ten times a second."""

    INTERVAL = 0.1

    def __init__(self, rows: _Rows):
        self._rows = rows
        self._lock = threading.Lock()
        self._drawn = 0.0
        self._handle: Any = None

    def update(self, done: int, total: int) -> None:
        self._rows.update(done, total)
        with self._lock:
            if time.monotonic() - self._drawn >= self.INTERVAL:
                self._draw()

    def finish(self) -> None:
        with self._lock:
            if self._rows.progress.tasks:
                self._draw()

    def _draw(self) -> None:
        from IPython.display import display
        from rich.console import Console

        # Drawn off screen (a console in a kernel would display what it prints), then shown.
        recorder = Console(file=io.StringIO(), record=True, width=self._rows.progress.console.width,
                           force_terminal=True, force_jupyter=False, color_system="truecolor")
        recorder.print(self._rows.progress.get_renderable())
        shown = {"text/plain": recorder.export_text(clear=False).rstrip("\n"),
                 "text/html": recorder.export_html(inline_styles=True, code_format=_HTML)}
        if self._handle is None:
            self._handle = display(shown, raw=True, display_id=True)
        else:
            self._handle.update(shown, raw=True)
        self._drawn = time.monotonic()


#: How rich's own output looks in a notebook (``rich.jupyter``).
_HTML = ('<pre style="white-space:pre;overflow-x:auto;line-height:normal;font-family:Menlo,'
         "'DejaVu Sans Mono',consolas,'Courier New',monospace\">{code}</pre>")
