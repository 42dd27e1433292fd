"""Read the prep settings of an existing vak configuration file, so vak users can reuse theirs.

vak 1.x keeps them in ``[vak.prep]`` and ``[vak.prep.spect_params]``; vak 0.x in ``[PREP]`` and
``[SPECT_PARAMS]``. Both are read. A ``[spectroflow]`` table in the same file (vak ignores it)
may set :data:`OWN_SETTINGS`. Paths are taken as written (relative ones against the current
folder, as vak does).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from .params import SpectParams, as_spect_params

#: Settings of a ``[spectroflow]`` table beside vak's: how outputs are stored.
OWN_SETTINGS = ("output_format", "output_dtype")


class ConfigError(ValueError):
    """The file is not a vak configuration spectroflow can use."""


@dataclass(frozen=True)
class PrepConfig:
    """What spectroflow takes from a vak config: where, which formats, labelset, spect params."""

    data_dir: str | None = None
    output_dir: str | None = None
    audio_format: str | None = None
    annot_format: str | None = None
    annot_file: str | None = None
    labelset: str | list | None = None
    spect_params: SpectParams = field(default_factory=SpectParams)
    dataset_type: str | None = None
    input_type: str | None = None
    spect_format: str | None = None
    train_dur: float | None = None
    val_dur: float | None = None
    test_dur: float | None = None
    #: The command the prepared dataset is for: the config's other command table (``train``,
    #: ``eval``, ``predict`` or ``learncurve``), as vak finds it; None when there is none.
    purpose: str | None = None
    #: A vak 0.x file (``[PREP]``, ``[TRAIN]``, ...).
    legacy: bool = False


#: The commands besides prep, whose tables name the purpose of a prepared dataset.
PURPOSES = ("eval", "learncurve", "predict", "train")


def load(path: str | Path) -> PrepConfig:
    """The prep settings of the vak config at ``path``.

    Examples
    --------
    >>> import tempfile, os
    >>> text = '''
    ... [vak.prep]
    ... data_dir = "gy6or6/032312"
    ... output_dir = "prep"
    ... audio_format = "cbin"
    ... annot_format = "notmat"
    ... labelset = "iabcdefghjk"
    ... [vak.prep.spect_params]
    ... fft_size = 512
    ... step_size = 64
    ... freq_cutoffs = [500, 10000]
    ... thresh = 6.25
    ... transform_type = "log_spect"
    ... '''
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     _ = Path(tmp, "config.toml").write_text(text)
    ...     cfg = load(Path(tmp, "config.toml"))
    >>> cfg.audio_format, cfg.labelset, cfg.spect_params.freq_cutoffs
    ('cbin', 'iabcdefghjk', (500.0, 10000.0))
    """
    try:
        doc = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read vak config {path}: {exc}") from exc
    def table(value: object, name: str) -> dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: {name} must be a table, got {value!r}")
        return dict(value)

    vak = table(doc["vak"], "vak") if "vak" in doc else {}
    if "prep" in vak:
        prep = table(vak["prep"], "[vak.prep]")
        spect = table(prep.pop("spect_params", {}), "[vak.prep.spect_params]")
        commands = [name for name in PURPOSES if name in vak]
    elif "PREP" in doc:
        prep = table(doc["PREP"], "[PREP]")
        spect = table(doc.get("SPECT_PARAMS", {}), "[SPECT_PARAMS]")
        commands = [name for name in PURPOSES if name.upper() in doc]
    else:
        raise ConfigError(f"{path} has no [vak.prep] (vak 1.x) or [PREP] (vak 0.x) table")
    # spectroflow's own settings sit in their own table, which vak leaves alone.
    own = table(doc.get("spectroflow", {}), "[spectroflow]")
    unknown = sorted(set(own) - set(OWN_SETTINGS))
    if unknown:
        raise ConfigError(f"{path}: [spectroflow] takes {list(OWN_SETTINGS)}, not {unknown}")
    try:
        params = as_spect_params({**spect, **own})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'value'}: {e['msg']}"
                             for e in exc.errors())
        raise ConfigError(f"{path}: spect_params: {problems}") from exc
    if len(commands) > 1:
        raise ConfigError(f"{path} has tables for several commands besides prep: {commands}; "
                          "vak takes one per file")
    return PrepConfig(
        **{key: prep.get(key) for key in _PREP_KEYS},
        spect_params=params,
        purpose=commands[0] if commands else None,
        legacy="prep" not in vak,
    )


#: The keys of ``[vak.prep]`` that :class:`PrepConfig` takes as they are.
_PREP_KEYS = ("data_dir", "output_dir", "audio_format", "annot_format", "annot_file", "labelset",
              "dataset_type", "input_type", "spect_format", "train_dur", "val_dur", "test_dur")


def _purpose_table(doc: Any, cfg: PrepConfig) -> Any:
    """The table of the config's command (``[vak.train]``, or vak 0.x's ``[TRAIN]``)."""
    assert cfg.purpose is not None
    return doc[cfg.purpose.upper()] if cfg.legacy else doc["vak"][cfg.purpose]


def named_dataset(path: str | Path) -> str | None:
    """The dataset the config already names for its command: vak 1.x's ``[vak.<command>.dataset]
    path``, or vak 0.x's ``[<COMMAND>] csv_path``; None when it names none."""
    cfg = load(path)
    if cfg.purpose is None:
        return None
    table = _purpose_table(tomllib.loads(Path(path).read_text()), cfg)
    if cfg.legacy:
        return table.get("csv_path")
    return table.get("dataset", {}).get("path")


def record_dataset(path: str | Path, dataset_path: str, csv_path: str) -> None:
    """Name the prepared dataset in the config, keeping the rest of the file as it was, as
    ``vak prep`` does: ``path = dataset_path`` under ``[vak.<command>.dataset]`` (vak 1.x), or
    ``csv_path = csv_path`` under ``[<COMMAND>]`` (vak 0.x)."""
    import tomlkit

    cfg = load(path)
    if cfg.purpose is None:
        raise ConfigError(f"{path} has no table for the command the dataset is for")
    doc = tomlkit.parse(Path(path).read_text())
    table = _purpose_table(doc, cfg)
    if cfg.legacy:
        table["csv_path"] = csv_path
    else:
        if "dataset" not in table:
            table.add("dataset", tomlkit.table())
        table["dataset"].add("path", dataset_path)
    Path(path).write_text(tomlkit.dumps(doc))
