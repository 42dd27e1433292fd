"""Preview pictures of outputs, drawn by a child process at the lowest CPU priority.

A preview (one output drawn as a PNG for a run's summary) is a convenience, and drawing it costs
about a second of CPU, most of it importing matplotlib. Drawn beside busy workers it takes that
second from them. A :class:`Drawer` is a child process at the lowest priority, started before
the workers are busy: it imports what drawing needs on CPU time left idle while they start,
then waits for the output to draw. The caller reads the output itself, so the child needs no
storage access or credentials.
"""

from __future__ import annotations

import subprocess
import sys

from .params import SpectParams

#: The child lowers its priority before importing anything of weight.
_CHILD = ("import os; hasattr(os, 'nice') and os.nice(19); "
          "from spectroflow.preview import main; main()")


class Drawer:
    """A child process that draws one ``.spect.npz`` with :func:`spectroflow.plot.figure`.

    It starts at once; :meth:`draw` hands it the output and waits for the PNG, :meth:`close`
    stops it if nothing is to be drawn.
    """

    def __init__(self, params: SpectParams, dpi: int = 60):
        self._proc = subprocess.Popen(
            [sys.executable, "-c", _CHILD, params.model_dump_json(), str(dpi)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )

    def draw(self, npz: bytes, timeout: float = 600) -> bytes:
        """The PNG of a ``.spect.npz`` given as bytes.

        Raises
        ------
        RuntimeError
            The child failed (its last line of error output is quoted) or took longer than
            ``timeout`` seconds.
        """
        try:
            out, err = self._proc.communicate(npz, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            self.close()
            raise RuntimeError(f"drawing the preview took longer than {timeout:g} s") from exc
        if self._proc.returncode or not out:
            code = self._proc.returncode
            lines = err.decode(errors="replace").strip().splitlines() or ["no error output"]
            raise RuntimeError(f"drawing the preview failed (exit code {code}): {lines[-1]}")
        return out

    def close(self) -> None:
        """Stop the child if it is still running (it holds nothing worth waiting for)."""
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.communicate()


def main() -> None:
    """The child: imports, then a ``.spect.npz`` on standard input and its PNG on standard
    output; the arguments are the parameters as JSON and the resolution in dots per inch."""
    import numpy as np

    from . import plot

    params = SpectParams.model_validate_json(sys.argv[1])
    dpi = int(sys.argv[2])
    # A first drawing loads fonts and sets up the canvas (0.1 s): do it before the output
    # arrives, on CPU time left idle, so that drawing the output takes less.
    tiny = {params.spect_key: np.ones((2, 2)), params.freqbins_key: np.arange(2.0),
            params.timebins_key: np.arange(2.0)}
    plot.png_bytes(plot.figure(tiny, params), dpi=dpi)
    npz = sys.stdin.buffer.read()
    if npz:
        fig = plot.figure(plot.npz_arrays(npz), params)
        sys.stdout.buffer.write(plot.png_bytes(fig, dpi=dpi))
