import io
import struct

import numpy as np
import pytest
import soundfile

import spectroflow
from spectroflow.audio import AudioError, read_audio
from spectroflow.params import SpectParams
from spectroflow.spectrogram import spectrogram

from conftest import DATA, load_npz, report_rows

SAMPLE_WAV = DATA / "birdsongrec/Bird0/Wave/3.wav"
TWEETY = SpectParams(freq_cutoffs=(500, 7000), thresh=6.25, transform_type="log_spect")


@pytest.fixture(scope="module")
def samples() -> np.ndarray:
    """The int16 samples of a real recording, to write into other containers."""
    return soundfile.read(str(SAMPLE_WAV), dtype="int16")[0]


def assert_same_spectrograms(sound, reference) -> None:
    """``sound`` gives exactly ``reference``'s spectrograms, with vak's parameters and tweety's."""
    for params in (SpectParams(), TWEETY):
        got = spectrogram(sound.data, sound.samplerate, params)
        expected = spectrogram(reference.data, reference.samplerate, params)
        for a, b in zip(got, expected, strict=True):
            np.testing.assert_array_equal(a, b)


def test_nist_sphere_named_wav_is_read_like_the_riff_wav_of_its_samples(tmp_path, samples):
    # TIMIT's layout: NIST SPHERE, 16 kHz, 16-bit, named .WAV.
    nist, riff = tmp_path / "SA1.WAV", tmp_path / "SA1.riff.wav"
    soundfile.write(str(nist), samples, 16000, format="NIST", subtype="PCM_16")
    soundfile.write(str(riff), samples, 16000, format="WAV", subtype="PCM_16")

    sound = read_audio(str(nist), "wav")
    reference = read_audio(str(riff), "wav")
    # vak's reader is soundfile.read: the same float64 samples.
    np.testing.assert_array_equal(sound.data, soundfile.read(str(nist))[0])
    assert sound.data.dtype == np.float64 and sound.samplerate == reference.samplerate == 16000.0
    assert "NIST" in sound.note and reference.note == ""
    assert_same_spectrograms(sound, reference)


def test_truncated_nist_sphere_is_refused(tmp_path, samples):
    path = tmp_path / "SA2.WAV"
    soundfile.write(str(path), samples, 16000, format="NIST", subtype="PCM_16")
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(AudioError, match=f"truncated: header declares {samples.size} frames"):
        read_audio(str(path), "wav")


@pytest.mark.parametrize("container", ["NIST", "AIFF", "AU", "CAF"])
def test_other_containers_named_wav_are_read_as_vak_reads_them_with_a_note(
    tmp_path, samples, container
):
    path = tmp_path / "x.wav"
    soundfile.write(str(path), samples, 32000, format=container, subtype="PCM_16")
    sound = read_audio(str(path), "wav")
    np.testing.assert_array_equal(sound.data, soundfile.read(str(path))[0])
    described = soundfile.info(str(path)).format_info
    assert sound.note == f"container is {described}, read as vak reads it"


@pytest.mark.parametrize("container", ["WAV", "WAVEX", "W64", "RF64"])
def test_riff_family_is_wav_without_a_note(tmp_path, samples, container):
    path = tmp_path / "x.wav"
    soundfile.write(str(path), samples, 32000, format=container, subtype="PCM_16")
    sound = read_audio(str(path), "wav")
    np.testing.assert_array_equal(sound.data, soundfile.read(str(path))[0])
    assert sound.note == ""


@pytest.mark.parametrize(
    ("name", "audio_format", "container", "right_format"),
    [
        ("x.wav", "wav", "FLAC", "flac"),
        ("x.wav", "wav", "OGG", "ogg"),
        ("x.flac", "flac", "WAV", "wav"),
        ("x.ogg", "ogg", "FLAC", "flac"),
    ],
)
def test_content_of_another_format_is_refused_with_the_fix(
    tmp_path, samples, name, audio_format, container, right_format
):
    path = tmp_path / name
    soundfile.write(str(path), samples, 32000, format=container)
    with pytest.raises(AudioError) as info:
        read_audio(str(path), audio_format)
    message = str(info.value)
    assert f"content is {container} audio, not {audio_format}" in message
    assert f"name it .{right_format} and run it with audio_format {right_format!r}" in message


def test_flac_gives_exactly_the_spectrogram_of_its_wav(tmp_path, samples):
    path = tmp_path / "3.flac"
    soundfile.write(str(path), samples, 32000, format="FLAC", subtype="PCM_16")
    wav, flac = read_audio(str(SAMPLE_WAV), "wav"), read_audio(str(path), "flac")
    assert flac.note == ""
    assert_same_spectrograms(flac, wav)


def test_ogg_vorbis_gives_a_spectrogram_close_to_its_wavs(tmp_path, samples):
    # libsndfile's default Vorbis quality. Vorbis is perceptual: it keeps the loud components
    # and spends few bits below the masking threshold, so quiet bins may differ by orders of
    # magnitude while the error as a whole stays ~20 dB or more below the signal. Hence two
    # checks: the error energy of the power spectrogram at least 20 dB below its energy
    # (measured 28 dB), and bins within 20 dB of the peak equal to 6 dB (measured 2.7 dB).
    # A 2 ms shift of the same audio fails both (30 % error, 9 dB).
    path = tmp_path / "3.ogg"
    soundfile.write(str(path), samples, 32000, format="OGG", subtype="VORBIS")
    wav, ogg = read_audio(str(SAMPLE_WAV), "wav"), read_audio(str(path), "ogg")

    s_wav, f_wav, t_wav = spectrogram(wav.data, wav.samplerate, SpectParams())
    s_ogg, f_ogg, t_ogg = spectrogram(ogg.data, ogg.samplerate, SpectParams())
    assert s_ogg.shape == s_wav.shape
    np.testing.assert_array_equal(f_ogg, f_wav)
    np.testing.assert_array_equal(t_ogg, t_wav)
    assert np.linalg.norm(s_ogg - s_wav) <= 0.1 * np.linalg.norm(s_wav)

    log_wav = spectrogram(wav.data, wav.samplerate, TWEETY)[0]
    log_ogg = spectrogram(ogg.data, ogg.samplerate, TWEETY)[0]
    loud = log_wav > -2.0  # log10 units: 20 dB below the peak
    assert loud.sum() > 100
    np.testing.assert_allclose(log_ogg[loud], log_wav[loud], rtol=0, atol=0.6)


def wav_bytes(samples: np.ndarray, subtype: str = "PCM_16") -> bytes:
    buf = io.BytesIO()
    soundfile.write(buf, samples, 32000, format="WAV", subtype=subtype)
    return buf.getvalue()


def unfinalised(wav: bytes, data_size: int, riff_size: int, tail: bytes = b"") -> bytes:
    """``wav`` (as soundfile writes it) as a recorder that never finalised its header leaves it:
    its ``data`` chunk declaring ``data_size`` bytes, its RIFF chunk ``riff_size``."""
    raw = bytearray(wav + tail)
    struct.pack_into("<I", raw, 4, riff_size)
    struct.pack_into("<I", raw, raw.index(b"data") + 4, data_size)
    return bytes(raw)


# What recorders leave: 0 (never updated), a size from the last periodic update, 0xFFFFFFFF (the
# length unknown when the header was written); the RIFF size as stale as the data size.
@pytest.mark.parametrize(
    ("data_size", "riff_size", "shown"),
    [(0, 0, "0"), (0, 36, "0"), (1000, 1036, "1000"), (0xFFFFFFFF, 0xFFFFFFFF, "0xFFFFFFFF")],
)
def test_unfinalised_wav_header_is_read_to_the_end_of_the_file_with_a_note(
    tmp_path, samples, data_size, riff_size, shown
):
    path, reference = tmp_path / "unfinalised.wav", tmp_path / "finalised.wav"
    reference.write_bytes(wav_bytes(samples))
    path.write_bytes(unfinalised(reference.read_bytes(), data_size, riff_size))

    sound = read_audio(str(path), "wav")
    finalised = read_audio(str(reference), "wav")
    np.testing.assert_array_equal(sound.data, finalised.data)
    assert sound.note == (f"the WAV header declares {shown} bytes of audio; read the "
                          f"{2 * samples.size} bytes that follow (an unfinalised recording)")
    assert_same_spectrograms(sound, finalised)


def test_unfinalised_wav_ends_at_its_last_whole_frame(tmp_path, samples):
    path = tmp_path / "stereo.wav"
    stereo = np.stack([samples, -samples], axis=1)
    # A recorder cut off in the middle of a frame: 3 bytes of the next stereo 16-bit frame.
    path.write_bytes(unfinalised(wav_bytes(stereo), 0, 0, tail=b"\x01\x02\x03"))
    sound = read_audio(str(path), "wav")
    np.testing.assert_array_equal(sound.data, samples / 32768)
    assert sound.channels == 2
    assert sound.note == (f"the WAV header declares 0 bytes of audio; read {4 * samples.size} of "
                          f"the {4 * samples.size + 3} bytes that follow, in whole frames "
                          "(an unfinalised recording)")


def test_chunks_after_the_audio_are_not_read_as_audio(tmp_path, samples):
    # A finalised file with metadata after its audio (as BWF and many editors write it).
    path = tmp_path / "tagged.wav"
    info = b"LIST" + struct.pack("<I", 12) + b"INFOISFT" + struct.pack("<I", 0)
    wav = bytearray(wav_bytes(samples) + info)
    struct.pack_into("<I", wav, 4, len(wav) - 8)
    path.write_bytes(bytes(wav))
    sound = read_audio(str(path), "wav")
    np.testing.assert_array_equal(sound.data, samples / 32768)
    assert sound.note == ""

    # An empty data chunk before it is an empty recording, not one to read to the end.
    path.write_bytes(unfinalised(bytes(wav), 0, len(wav) - 8 - 2 * samples.size)
                     .replace(samples.tobytes(), b""))
    with pytest.raises(AudioError, match="the WAV header declares 0 bytes of audio, and a LIST "
                                         "chunk follows: the file holds no audio"):
        read_audio(str(path), "wav")


def test_unfinalised_compressed_wav_is_refused_naming_its_header(tmp_path, samples):
    path = tmp_path / "adpcm.wav"
    path.write_bytes(unfinalised(wav_bytes(samples, "MS_ADPCM"), 0, 0))
    with pytest.raises(AudioError) as info:
        read_audio(str(path), "wav")
    assert str(info.value).startswith(
        "the WAV header declares 0 bytes of audio, but more follow (an unfinalised recording): "
        "its Microsoft ADPCM audio cannot be read without its length"
    )


def test_unfinalised_wavs_on_s3_give_the_spectrograms_of_their_finalised_copies(s3, samples):
    fs, bucket = s3
    finalised = wav_bytes(samples)
    fs.pipe(f"{bucket}/audio/finalised/3.wav", finalised)
    fs.pipe(f"{bucket}/audio/unfinalised/3.wav", unfinalised(finalised, 0, 0))
    fs.pipe(f"{bucket}/audio/unfinalised/adpcm.wav",
            unfinalised(wav_bytes(samples, "MS_ADPCM"), 0, 0))
    fs.invalidate_cache()
    dest = f"s3://{bucket}/spect"
    summary = spectroflow.run("wav", TWEETY, dest, audio_dir=f"s3://{bucket}/audio",
                              scheduler="synchronous")

    assert summary.counts == {"written": 2, "failed": 1}
    rows = {source.removeprefix(f"s3://{bucket}/audio/"): row
            for source, row in report_rows(summary.report).items()}
    assert rows["unfinalised/3.wav"]["reason"] == (
        f"the WAV header declares 0 bytes of audio; read the {2 * samples.size} bytes that "
        "follow (an unfinalised recording)")
    assert rows["finalised/3.wav"]["reason"] == ""
    assert rows["unfinalised/adpcm.wav"]["status"] == "failed"
    assert "the WAV header declares 0 bytes of audio" in rows["unfinalised/adpcm.wav"]["reason"]

    def arrays(folder: str) -> dict:
        loaded = load_npz(f"{dest}/{folder}/3.wav.spect.npz")
        return {k: v for k, v in loaded.items() if k != "audio_path"}

    got, expected = arrays("unfinalised"), arrays("finalised")
    assert got.keys() == expected.keys() and "s" in got
    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key])
