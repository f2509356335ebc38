"""The audio front end: reading messy files, centre pad/crop, MFCC shapes."""
import os

import numpy as np
import pytest
import soundfile as sf

from conftest import write_tone
from timnet import audio
from timnet.errors import TimnetError
from timnet.features import FeatureConfig, file_features


@pytest.mark.parametrize("n,length", [(10, 16), (11, 16), (16, 16), (21, 16), (20, 16)])
def test_fit_length_centres(n, length):
    y = np.arange(1, n + 1, dtype=np.float32)
    out = audio.fit_length(y, length)
    assert len(out) == length
    if n < length:  # (L-n)//2 zeros on the left, the rest on the right
        left = (length - n) // 2
        assert (out[:left] == 0).all() and out[left] == 1 and out[left + n - 1] == n
        assert (out[left + n:] == 0).all()
    else:  # (n-L)//2 dropped from the left, the rest from the right
        start = (n - length) // 2
        assert np.array_equal(out, y[start:start + length])


def test_stereo_24bit_48k_is_averaged_and_resampled(tmp_path):
    path = write_tone(tmp_path / "s.wav", sr=48000, channels=2, subtype="PCM_24", seconds=0.5)
    raw, sr = sf.read(str(path), dtype="float32")
    y, native = audio.read_audio(path)
    assert native == 48000 and y.dtype == np.float32
    np.testing.assert_allclose(y, raw.mean(axis=1), atol=1e-7)
    y22 = audio.load_audio(path)
    assert abs(len(y22) - 0.5 * 22050) <= 1


def test_flac_and_8k_read(tmp_path):
    path = write_tone(tmp_path / "a.flac", sr=8000, fmt="FLAC")
    feats = file_features(path, FeatureConfig(signal_length=22050))
    assert feats.shape == (1 + 22050 // 512, 39) and np.isfinite(feats).all()


def test_features_frames_follow_signal_length():
    for length, frames in ((96000, 188), (310000, 606), (88000, 172)):
        assert FeatureConfig(signal_length=length).frames == frames
    y = np.random.default_rng(0).standard_normal(50000).astype(np.float32)
    from timnet.features import waveform_features
    assert waveform_features(y, FeatureConfig(signal_length=96000)).shape == (188, 39)


def test_truncated_wav_is_refused(tmp_path):
    path = write_tone(tmp_path / "t.wav", seconds=1.0)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(TimnetError, match=r"t\.wav: truncated WAV"):
        audio.read_audio(path)

    # a writer that counted its 44-byte header into the data size: read, like librosa, as it is
    path.write_bytes(data)
    y, sr = audio.read_audio(path)
    assert data[36:40] == b"data"  # soundfile's plain 44-byte header: the size is bytes 40-43
    size = int.from_bytes(data[40:44], "little")
    path.write_bytes(data[:40] + (size + 44).to_bytes(4, "little") + data[44:])
    y2, sr2 = audio.read_audio(path)
    assert sr2 == sr and np.array_equal(y2, y)
    path.write_bytes(data[:40] + (size + 44 + audio.WAV_MISCOUNT).to_bytes(4, "little") + data[44:])
    with pytest.raises(TimnetError, match=r"t\.wav: truncated WAV"):
        audio.read_audio(path)


def test_empty_and_non_audio_files_are_refused(tmp_path):
    empty = tmp_path / "e.wav"
    empty.write_bytes(b"")
    with pytest.raises(TimnetError, match=r"e\.wav: empty file"):
        audio.read_audio(empty)
    text = tmp_path / "n.wav"
    text.write_text("this is not audio\n" * 20)
    with pytest.raises(TimnetError, match=r"n\.wav: not readable audio"):
        audio.read_audio(text)
    header_only = tmp_path / "h.wav"
    sf.write(str(header_only), np.zeros(0, np.float32), 16000)
    with pytest.raises(TimnetError, match=r"h\.wav: (holds no audio|empty)"):
        audio.read_audio(header_only)
    # two links naming each other: a loop, not a link to a file that has gone
    (tmp_path / "a.wav").symlink_to(tmp_path / "b.wav")
    (tmp_path / "b.wav").symlink_to(tmp_path / "a.wav")
    with pytest.raises(TimnetError, match=r"a\.wav: a symbolic link loop \(via .*b\.wav\); expected an audio file"):
        audio.read_audio(tmp_path / "a.wav")


def test_non_finite_samples_are_refused(tmp_path):
    # a float WAV can hold NaN or inf; librosa would only fail deep inside the STFT, with a traceback
    for name, bad in (("nan.wav", np.nan), ("inf.wav", np.inf)):
        y = np.zeros(4000, np.float32)
        y[100] = bad
        sf.write(str(tmp_path / name), y, 16000, subtype="FLOAT")
        with pytest.raises(TimnetError, match=name.replace(".", r"\.") + ": holds NaN or infinite samples"):
            audio.read_audio(tmp_path / name)


@pytest.mark.parametrize("sr", [22050, 16000])
def test_mfcc_is_librosas(sr):
    """The cached-filter-bank MFCC equals `librosa.feature.mfcc` with its defaults (transposed), to
    float32 rounding: the real-data tier checks the bits on EMODB; this holds for any signal and rate."""
    import librosa

    y = (np.random.default_rng(sr).standard_normal(sr) * 0.1).astype(np.float32)
    want = librosa.feature.mfcc(y=y, sr=sr, n_mfcc=39).T
    got = audio.mfcc(y, sr=sr)
    assert got.shape == want.shape == (1 + sr // 512, 39)
    np.testing.assert_allclose(got, want, atol=1e-3, rtol=0)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # audioread's imports, via librosa.load
def test_load_audio_is_librosa_load(tmp_path):
    """Mixing down and resampling as the authors' `librosa.load(path, sr=22050)`."""
    import librosa

    path = write_tone(tmp_path / "s.wav", sr=48000, channels=2, subtype="PCM_24", seconds=0.5)
    np.testing.assert_allclose(audio.load_audio(path), librosa.load(str(path), sr=22050)[0], atol=1e-6, rtol=0)


def test_a_header_with_an_impossible_sample_rate_is_refused(tmp_path):
    """A damaged header's 2 Hz would be resampled to 22050 Hz: gigabytes; 2 GHz gives one sample of
    silence. Both are refused, naming the file."""
    for rate in (2, 2_000_000_000):
        path = tmp_path / f"sr{rate}.wav"
        sf.write(path, np.zeros(8000, np.float32), 8000, subtype="PCM_16")
        data = bytearray(path.read_bytes())
        data[24:28] = rate.to_bytes(4, "little")  # the fmt chunk's sample rate
        path.write_bytes(bytes(data))
        with pytest.raises(TimnetError, match=f"sr{rate}.wav: a sample rate of {rate} Hz in its header; expected 1000 to"):
            audio.read_audio(path)


def test_waveform_features_take_finite_float_samples_only():
    """int16 PCM as is would be 32768 times too loud, an empty array silence, NaN a librosa error:
    each is one error instead."""
    from timnet.features import waveform_features

    cfg = FeatureConfig(signal_length=4096)
    assert waveform_features(np.zeros(100, np.float64), cfg).shape == (cfg.frames, 39)
    for bad, said in ((np.zeros(100, np.int16), "waveform of int16 samples invalid; expected floats"),
                      (np.zeros(0, np.float32), "waveform with no samples"),
                      (np.array([0.1, np.nan, 0.2], np.float32), "waveform with 1 NaN or infinite samples")):
        with pytest.raises(TimnetError, match=said):
            waveform_features(bad, cfg)


@pytest.mark.parametrize("container", ["AIFF", "RF64"])
def test_another_container_cut_short_is_refused(tmp_path, container):
    """libsndfile reads half an AIFF or RF64 as half its audio without an error; its parse log says
    the header declares more, and the file is refused as a truncated WAV is."""
    path = tmp_path / f"a.{'aiff' if container == 'AIFF' else 'wav'}"
    sf.write(path, np.full(22050, 0.1, np.float32), 22050, format=container, subtype="PCM_16")
    assert len(audio.read_audio(path)[0]) == 22050
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(TimnetError, match="truncated audio: its header declares more than the file holds"):
        audio.read_audio(path)


@pytest.mark.parametrize("container", ["OGG", "NIST", "MP3", "W64"])
def test_a_cut_container_libsndfile_reads_without_a_word_is_refused(tmp_path, container):
    """A cut Ogg Vorbis, NIST SPHERE or MP3 reads as the audio left, and libsndfile's parse log says
    nothing: Ogg is checked by its last page, NIST by its sample count, MP3 by the decoder stopping
    short of the header's count. The whole file reads whole."""
    subtype = {"OGG": "VORBIS", "MP3": "MPEG_LAYER_III"}.get(container, "PCM_16")
    path = tmp_path / f"a.{container.lower()}"
    y = np.random.default_rng(0).standard_normal(22050 * 6).astype(np.float32) * 0.2
    sf.write(path, y, 22050, format=container, subtype=subtype)
    assert len(audio.read_audio(path)[0]) == len(y)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(TimnetError, match=r"a\.\w+: truncated audio: "):
        audio.read_audio(path)


def test_whole_files_pass_the_truncation_checks_and_read_as_soundfile_reads_them(tmp_path):
    """An Ogg with zero padding or an ID3 tag after its last page; a VBR MP3 that begins in silence
    with no Xing frame (libsndfile guesses its length from the first frame's bit rate: far too long);
    an MP3 below 32 kHz, bit for bit (libsndfile's decoder rounds otherwise unless read from the
    start); a GSM 6.10 WAV (a codec that reads only with a frame count)."""
    rng = np.random.default_rng(2)
    y = np.concatenate([np.zeros(22050 * 2), rng.standard_normal(22050 * 4) * 0.3]).astype(np.float32)

    def same(path):
        assert audio.read_audio(path)[0].tobytes() == sf.read(path, dtype="float32")[0].tobytes(), path

    ogg = tmp_path / "a.ogg"
    sf.write(ogg, y, 22050, format="OGG", subtype="VORBIS")
    for name, tail in (("zeros", bytes(100)), ("id3", b"TAG" + bytes(125))):
        (tmp_path / f"{name}.ogg").write_bytes(ogg.read_bytes() + tail)
        same(tmp_path / f"{name}.ogg")
    mp3 = tmp_path / "a.mp3"
    with sf.SoundFile(mp3, "w", 22050, 1, format="MP3", subtype="MPEG_LAYER_III", bitrate_mode="VARIABLE",
                      compression_level=0.3) as f:
        f.write(y)
    same(mp3)
    data = mp3.read_bytes()
    assert data[:2] == b"\xff\xf3"  # MPEG-2 layer III, as libsndfile writes 22.05 kHz; its first frame is the Xing one
    length = 72 * 1000 * (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160)[data[2] >> 4] // 22050 + (data[2] >> 1 & 1)
    assert b"Xing" in data[:length] or b"Info" in data[:length]
    (tmp_path / "noxing.mp3").write_bytes(data[length:])
    assert sf.info(tmp_path / "noxing.mp3").frames > len(y) + audio.MISSING_FRAMES  # the guess
    same(tmp_path / "noxing.mp3")
    gsm = tmp_path / "gsm.wav"
    sf.write(gsm, y, 8000, subtype="GSM610")
    same(gsm)


def test_a_cut_mp3_is_one_message_not_the_decoders_own_lines(tmp_path):
    """libmpg123 prints "Xing stream size off ..." on the C stderr when it opens a cut MP3: `predict`
    says the file is truncated, once, and the decoder's lines are not beside it; stderr works after."""
    import subprocess
    import sys

    path = tmp_path / "cut.mp3"
    y = np.random.default_rng(0).standard_normal(22050 * 2).astype(np.float32) * 0.1
    sf.write(path, y, 22050, format="MP3")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    code = ("import sys; from timnet import audio\n"
            "try:\n audio.read_audio(sys.argv[1])\nexcept Exception as e:\n print(e, file=sys.stderr)\n"
            "print('after', file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True)
    lines = done.stderr.splitlines()
    assert len(lines) == 2 and lines[1] == "after", done.stderr
    assert lines[0].startswith(f"{path}: truncated audio: its header declares 44100 samples, "), done.stderr

    # threads reading MP3s at once leave stderr where it was; a process started without stderr reads MP3s
    whole = tmp_path / "whole.mp3"
    sf.write(whole, y, 22050, format="MP3")
    threads = ("import os, sys; from concurrent.futures import ThreadPoolExecutor; from timnet import audio\n"
               "list(ThreadPoolExecutor(4).map(lambda _: audio.read_audio(sys.argv[1]), range(40)))\n"
               "print(os.readlink('/proc/self/fd/2'))")
    done = subprocess.run([sys.executable, "-c", threads, str(whole)], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() != os.devnull, done
    closed = "import sys; from timnet import audio; print(len(audio.read_audio(sys.argv[1])[0]))"
    done = subprocess.run([sys.executable, "-c", closed, str(whole)], capture_output=True, text=True,
                          preexec_fn=lambda: os.close(2))
    assert done.returncode == 0 and int(done.stdout) == len(y), done
