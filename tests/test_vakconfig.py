"""Reading the prep settings of a vak config: what each table gives, the defaults, and errors
that name the file and the problem. (The command line's use of a config is in test_cli.)"""

from __future__ import annotations

import re

import pytest

from spectroflow.params import SpectParams
from spectroflow.vakconfig import ConfigError, PrepConfig, load

#: A vak 1.x config as ``vak prep`` takes it, with tables and keys spectroflow does not use.
VAK_1X = """
[vak.prep]
dataset_type = "frame classification"
input_type = "spect"
data_dir = "gy6or6/032312"
output_dir = "prep"
audio_format = "cbin"
annot_format = "notmat"
annot_file = "annotations.csv"
labelset = "iabcdefghjk"
train_dur = 50

[vak.prep.spect_params]
fft_size = 1024
step_size = 128
freq_cutoffs = [500, 10000]
thresh = 6.25
transform_type = "log_spect"
spect_key = "spect"
freqbins_key = "freq"
timebins_key = "time"
audio_path_key = "wav"

[vak.train]
model = "TweetyNet"
"""


def write(tmp_path, text: str, name: str = "config.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_vak_1x_config_gives_every_prep_setting_and_spect_param(tmp_path):
    cfg = load(write(tmp_path, VAK_1X))
    assert cfg == PrepConfig(
        data_dir="gy6or6/032312", output_dir="prep", audio_format="cbin", annot_format="notmat",
        annot_file="annotations.csv", labelset="iabcdefghjk",
        spect_params=SpectParams(fft_size=1024, step_size=128, freq_cutoffs=(500.0, 10000.0),
                                 thresh=6.25, transform_type="log_spect", spect_key="spect",
                                 freqbins_key="freq", timebins_key="time", audio_path_key="wav"),
        dataset_type="frame classification", input_type="spect", train_dur=50, purpose="train",
    )


def test_path_may_be_a_string_and_relative_paths_are_kept_as_written(tmp_path, monkeypatch):
    write(tmp_path, VAK_1X)
    monkeypatch.chdir(tmp_path)
    cfg = load("config.toml")
    # vak takes them against the current folder, not the config's: nothing is resolved here.
    assert cfg.data_dir == "gy6or6/032312"
    assert (cfg.output_dir, cfg.annot_file) == ("prep", "annotations.csv")


def test_settings_missing_from_the_file_are_none_and_spect_params_vaks_defaults(tmp_path):
    cfg = load(write(tmp_path, '[vak.prep]\naudio_format = "wav"\n'))
    assert cfg == PrepConfig(audio_format="wav")
    assert cfg.data_dir is None and cfg.labelset is None
    assert cfg.spect_params == SpectParams()
    assert (cfg.spect_params.fft_size, cfg.spect_params.step_size) == (512, 64)


def test_spect_params_alone_are_enough(tmp_path):
    cfg = load(write(tmp_path, "[vak.prep.spect_params]\nfft_size = 256\nstep_size = 32\n"))
    assert cfg == PrepConfig(spect_params=SpectParams(fft_size=256, step_size=32))


def test_a_labelset_list_is_kept_as_a_list_of_its_labels(tmp_path):
    cfg = load(write(tmp_path, '[vak.prep]\nlabelset = ["en", "ab", "range: 1-2"]\n'))
    assert cfg.labelset == ["en", "ab", "range: 1-2"]


def test_vak_0x_config_without_spect_params_gets_the_defaults(tmp_path):
    cfg = load(write(tmp_path, '[PREP]\ndata_dir = "data"\noutput_dir = "out"\n'
                               'audio_format = "wav"\n[TRAIN]\nnetworks = "TweetyNet"\n'))
    assert cfg == PrepConfig(data_dir="data", output_dir="out", audio_format="wav",
                             purpose="train", legacy=True)


def test_vak_0x_spect_params_are_read_from_their_own_table(tmp_path):
    cfg = load(write(tmp_path, '[PREP]\nannot_format = "notmat"\n[SPECT_PARAMS]\n'
                               'freq_cutoffs = [500, 8000]\nthresh = 6.25\n'
                               'transform_type = "log_spect"\n'))
    assert cfg.annot_format == "notmat"
    assert cfg.spect_params == SpectParams(freq_cutoffs=(500, 8000), thresh=6.25,
                                           transform_type="log_spect")


def test_a_missing_file_is_named_with_the_reason(tmp_path):
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load(missing)
    assert str(info.value).startswith(f"cannot read vak config {missing}: ")
    assert "No such file" in str(info.value)


def test_a_folder_is_not_read_as_a_config(tmp_path):
    with pytest.raises(ConfigError, match=r"cannot read vak config .*Is a directory"):
        load(tmp_path)


def test_invalid_toml_names_the_file_and_the_line(tmp_path):
    path = write(tmp_path, '[vak.prep]\ndata_dir = "x"\naudio_format = cbin\n')
    with pytest.raises(ConfigError) as info:
        load(path)
    message = str(info.value)
    assert str(path) in message and "line 3" in message, message


@pytest.mark.parametrize("text", [
    "",
    '[vak.train]\nmodel = "TweetyNet"\n',
    '[prep]\ndata_dir = "x"\n',  # vak's tables are [vak.prep] or [PREP], not [prep]
])
def test_a_file_without_a_prep_table_says_which_tables_it_needs(tmp_path, text):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load(path)
    assert str(info.value) == f"{path} has no [vak.prep] (vak 1.x) or [PREP] (vak 0.x) table"


@pytest.mark.parametrize("table", ["[vak.prep.spect_params]", "[SPECT_PARAMS]"])
def test_every_bad_spect_param_is_named_in_one_message(tmp_path, table):
    prep = "[PREP]\n" if table == "[SPECT_PARAMS]" else ""
    bad = "fft_size = 0\nfreq_cutoffs = [10000, 500]\nfft_sise = 3\n"
    path = write(tmp_path, f"{prep}{table}\n{bad}")
    with pytest.raises(ConfigError) as info:
        load(path)
    message = str(info.value)
    assert message.startswith(f"{path}: spect_params: "), message
    problems = message.removeprefix(f"{path}: spect_params: ").split("; ")
    assert [p.split(":")[0] for p in problems] == ["fft_size", "freq_cutoffs", "fft_sise"], message
    assert "greater than 0" in problems[0] and "0 < low < high" in problems[1]
    assert "Extra inputs" in problems[2]


@pytest.mark.parametrize(("spect_params", "words"), [
    ("step_size = 1024", ["step_size (1024)", "fft_size (512)"]),
    ("fft_size = 512.5", ["fft_size", "integer"]),
    ('transform_type = "log"', ["transform_type", "log_spect"]),
    ("thresh = nan", ["thresh", "finite"]),
    ('spect_key = "file"', ["spect_key", "np.savez"]),
])
def test_a_bad_spect_param_names_the_field_and_what_is_wrong(tmp_path, spect_params, words):
    path = write(tmp_path, f"[vak.prep.spect_params]\n{spect_params}\n")
    with pytest.raises(ConfigError) as info:
        load(path)
    message = str(info.value)
    assert str(path) in message and all(word in message for word in words), message


@pytest.mark.parametrize("text", [
    "vak = 1\n",
    "[vak]\nprep = 5\n",
    "[vak.prep]\nspect_params = 5\n",
    "SPECT_PARAMS = 3\n[PREP]\n",
])
def test_a_value_where_a_table_belongs_is_a_config_error(tmp_path, text):
    with pytest.raises(ConfigError, match="table"):
        load(write(tmp_path, text))


def test_the_plot_command_names_a_broken_config_in_one_line(tmp_path):
    from typer.testing import CliRunner

    from spectroflow.cli import app

    path = write(tmp_path, "vak = 1\n")
    result = CliRunner().invoke(app, ["plot", "x.spect.npz", "--config", str(path)])
    assert result.exit_code == 2
    assert result.output == f"error: {path}: vak must be a table, got 1\n"


def test_a_spectroflow_table_sets_how_outputs_are_stored(tmp_path):
    text = VAK_1X + '\n[spectroflow]\noutput_format = "npz-compressed"\noutput_dtype = "float32"\n'
    params = load(write(tmp_path, text)).spect_params
    assert (params.output_format, params.output_dtype) == ("npz-compressed", "float32")
    assert params.fft_size == 1024  # vak's own table still read


@pytest.mark.parametrize(("table", "words"), [
    ('[spectroflow]\nfft_size = 1024', "takes ['output_format', 'output_dtype'], not ['fft_size']"),
    ('[spectroflow]\noutput_dtype = "float16"', "output_dtype: Input should be 'float64' or 'float32'"),
])
def test_a_wrong_spectroflow_setting_is_named(tmp_path, table, words):
    with pytest.raises(ConfigError, match=re.escape(words)):
        load(write(tmp_path, VAK_1X + "\n" + table + "\n"))
