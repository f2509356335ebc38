"""Audio I/O and the authors' MFCC front end (SPEC.md §1), as pure functions over arrays.

Reading files lives here and nowhere else; everything after `load_audio` is arithmetic
on NumPy arrays, so the same code serves extraction, prediction and tests.
"""
from __future__ import annotations

import contextlib
import errno
import functools
import math
import os
import re
import struct
import sys
import threading
from pathlib import Path

import numpy as np

from .errors import TimnetError

SAMPLE_RATE = 22050  # librosa's default `sr`: the authors never passed another one
N_MFCC = 39
N_FFT = 2048  # samples per STFT frame (librosa default, ~93 ms at 22.05 kHz)
HOP_LENGTH = 512  # samples between frames (librosa default, ~23 ms)
N_MELS = 128  # mel bands under the MFCCs (librosa default; recipe.py's augmentations rebuild them)
WAV_MISCOUNT = 1024  # bytes a WAV's data chunk may claim beyond the file's end (_check_wav)
MISSING_FRAMES = 4096  # frames a decoder may return short of the header's count before the file is called cut


def check_container(path: Path) -> None:
    """Refuse a file cut short, which libsndfile reads without complaint as the audio that is
    left (half a file loads as half its audio): that would silently change a sample's features.
    Each container says its length its own way, so each is checked its own way."""
    with open(path, "rb") as f:
        head = f.read(12)
    if head[:4] in (b"RIFF", b"RIFX") and head[8:12] == b"WAVE":
        return _check_wav(path, big_endian=head[:4] == b"RIFX")
    if head[:4] == b"OggS":
        return _check_ogg(path)
    if head[:8] == b"NIST_1A\n":
        return _check_nist(path)
    return _check_sndfile_log(path)  # RF64, W64, AIFF, AU, CAF, ...: libsndfile's parse log says it


def _check_wav(path: Path, *, big_endian: bool) -> None:
    """Refuse a RIFF/WAVE file whose data chunk claims more bytes than the file holds. Up to
    WAV_MISCOUNT bytes short is let through: some writers count the 44-byte header or a pad
    byte into the data size, and refusing those files would drop utterances (and change the
    folds) that the authors' librosa read, with the same samples as here. A copy cut short in
    transfer lacks far more.
    """
    size = path.stat().st_size
    endian = ">" if big_endian else "<"
    with open(path, "rb") as f:
        pos = 12
        while pos + 8 <= size:
            f.seek(pos)
            chunk_id, chunk_size = struct.unpack(endian + "4sI", f.read(8))
            if chunk_id == b"data":
                # 0 and 0xFFFFFFFF are what streaming writers leave when they never came back
                # to fill in the size; libsndfile then reads to the end, which is right.
                if chunk_size not in (0, 0xFFFFFFFF) and pos + 8 + chunk_size > size + WAV_MISCOUNT:
                    raise TimnetError(
                        f"{path}: truncated WAV: header declares {chunk_size} bytes of audio, "
                        f"the file holds {size - pos - 8}"
                    )
                return
            pos += 8 + chunk_size + (chunk_size & 1)  # chunks are padded to even sizes


OGG_PAGE_MAX = 27 + 255 + 255 * 255  # bytes: header, segment table, the largest body Ogg allows


@functools.lru_cache(maxsize=1)
def _ogg_crc_table() -> tuple[int, ...]:
    """Ogg's CRC-32 (polynomial 0x04C11DB7, not reflected: not zlib's) a byte at a time."""
    table = []
    for i in range(256):
        r = i << 24
        for _ in range(8):
            r = ((r << 1) ^ 0x04C11DB7 if r & 0x80000000 else r << 1) & 0xFFFFFFFF
        table.append(r)
    return tuple(table)


def _ogg_page_end(data: bytes, at: int) -> int | None:
    """Where the Ogg page beginning at `at` ends, if it is whole and its checksum holds; else None."""
    if at + 27 > len(data) or at + 27 + data[at + 26] > len(data):
        return None
    table = data[at + 27 : at + 27 + data[at + 26]]
    end = at + 27 + len(table) + sum(table)
    if end > len(data):
        return None
    crc, lookup = 0, _ogg_crc_table()
    for b in data[at:at + 22] + bytes(4) + data[at + 26:end]:  # the checksum field counted as zeros
        crc = ((crc << 8) & 0xFFFFFFFF) ^ lookup[(crc >> 24) ^ b]
    return end if crc == int.from_bytes(data[at + 22 : at + 26], "little") else None


def _check_ogg(path: Path) -> None:
    """An Ogg stream declares no length, and a cut Ogg Vorbis reads as the pages left: refuse a file
    whose last page is begun and not whole. Bytes that are no page after the last whole one (zero
    padding, an ID3 tag) are let through, as libsndfile reads them; so is a last page without the
    end-of-stream flag (some recorders never set it), which leaves a cut exactly between pages unseen."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        f.seek(max(0, size - 2 * OGG_PAGE_MAX))
        tail = f.read()
    at = len(tail)
    # From the end back to the last whole page ("OggS" may occur inside a page's body by chance;
    # a whole page's checksum does not hold there)
    while (at := tail.rfind(b"OggS", 0, at)) >= 0:
        if (end := _ogg_page_end(tail, at)) is not None:
            break
    else:
        end = None
    if end is None and size <= len(tail):  # not one whole page in the file: libsndfile's read says why
        return
    begun = tail.find(b"OggS", end or 0)
    if end is None or begun >= 0:
        raise TimnetError(f"{path}: truncated audio: its last Ogg page is cut short")


def _check_nist(path: Path) -> None:
    """A NIST SPHERE header gives the sample count, which libsndfile ignores for the file's size."""
    with open(path, "rb") as f:
        header = f.read(1024).decode("ascii", "replace").split("\n")
    try:
        fields = {ln.split()[0]: ln.split()[2] for ln in header[2:] if len(ln.split()) >= 3}
        need = int(header[1]) + int(fields["sample_count"]) * int(fields["sample_n_bytes"]) * int(fields.get("channel_count", 1))
    except (IndexError, KeyError, ValueError):  # fields absent: nothing to check by; libsndfile's read decides
        return
    if fields.get("sample_coding", "pcm") != "pcm":
        return  # compressed ("pcm,embedded-shorten-v2.00", ...) or another coding: the size is not the count's
    if (size := path.stat().st_size) < need:
        raise TimnetError(f"{path}: truncated audio: its header declares {need} bytes, the file holds {size}")


def _mp3_counted(path: Path) -> bool:
    """Whether an MP3 states its length (a Xing, Info or VBRI frame first) rather than the decoder
    guessing it from the first frame's bit rate, which leading silence puts far too high."""
    with open(path, "rb") as f:
        head = f.read(10)
        skip = 0
        if head[:3] == b"ID3" and len(head) == 10:  # an ID3v2 tag first: its size is 4 x 7 bits
            skip = 10 + sum((b & 0x7F) << (7 * (3 - i)) for i, b in enumerate(head[6:10])) + (10 if head[5] & 0x10 else 0)
        f.seek(skip)
        first = f.read(4096)
    sync = next((i for i in range(len(first) - 1) if first[i] == 0xFF and first[i + 1] & 0xE0 == 0xE0), None)
    return sync is not None and any(tag in first[sync : sync + 200] for tag in (b"Xing", b"Info", b"VBRI"))


# what libsndfile's parse log says of a chunk that claims more than the file holds: AIFF's
# "*** Chunk size 44108 > file length 22077", RF64's "Riff size : 44196 (should be 22094)"
_CUT_SHORT = re.compile(r"> file length|\(should be \d+\)")


def _check_sndfile_log(path: Path) -> None:
    """Refuse a file of another container that libsndfile found cut short: it reads what is left
    without complaint (half an AIFF loads as half its audio), which would change the features."""
    try:
        log = audio_info(path).extra_info
    except Exception:  # not readable at all: the read that follows says why
        return
    if line := next((ln.strip() for ln in log.splitlines() if _CUT_SHORT.search(ln)), None):
        raise TimnetError(f"{path}: truncated audio: its header declares more than the file holds ({line.lstrip('* ')})")


def sndfile_message(e: Exception) -> str:
    """libsndfile's own words for a failure: str(e) names the open file object, not the file."""
    return (getattr(e, "error_string", None) or str(e)).replace("\n", " ")


def audio_info(path: str | Path):
    """soundfile's header info of a file, opened here: soundfile encodes names as UTF-8 and so
    refuses a file whose name is not (a Latin-1 "café.wav" from an old archive)."""
    import soundfile as sf

    with _decoder_quiet(path), open(path, "rb") as f:
        return sf.info(f)


def _looks_mp3(path: Path) -> bool:
    """An ID3 tag or an MPEG audio frame's sync word first, whatever the file's name."""
    try:
        with open(path, "rb") as f:
            head = f.read(3)
    except OSError:
        return False
    return head == b"ID3" or (len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0)


_STDERR_SWAP = threading.Lock()  # one MP3 read at a time holds fd 2: two would restore each other's /dev/null


@contextlib.contextmanager
def _decoder_quiet(path: Path):
    """libmpg123, libsndfile's MP3 decoder, prints warnings of its own to the process's C stderr
    ("Xing stream size off by more than 1%" for a cut file), stray lines beside the one timnet says
    of the file (truncated, its counts). For an MP3's open and read they go to /dev/null: file
    descriptor 2 is pointed there and back (entered before the audio file is opened, so that file
    never is descriptor 2), one thread at a time. What another thread writes to stderr meanwhile is
    lost; timnet's own messages are said after the read."""
    stderr = sys.__stderr__  # None when the process started with descriptor 2 closed: nothing to keep clean
    if stderr is None or not _looks_mp3(Path(path)):
        yield
        return
    with _STDERR_SWAP:
        try:
            if stderr.fileno() != 2:
                raise OSError
            saved = os.dup(2)
        except (OSError, ValueError):  # closed since, or not the process's descriptor 2
            yield
            return
        try:
            sink = os.open(os.devnull, os.O_WRONLY)
        except OSError:  # no descriptor left: the decoder's lines are the lesser harm
            os.close(saved)
            yield
            return
        try:
            for stream in (sys.stderr, stderr):
                if stream is not None:
                    stream.flush()  # what Python has buffered is written where it was meant to go
            os.dup2(sink, 2)
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            os.close(sink)


NATIVE_RATES = (1000, 384000)  # Hz: any recording's; a header outside is damaged


def read_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """Read any file libsndfile can, as mono float32 at its native sample rate (integer PCM scaled to
    [-1, 1); float files as stored, which may exceed it)."""
    import soundfile as sf

    path = Path(path)
    if not path.is_file():
        if path.is_symlink() and not path.exists():
            try:  # a link whose chain comes back to itself has no end to miss: a loop, not a broken link
                os.stat(path)
            except OSError as e:
                if e.errno == errno.ELOOP:
                    raise TimnetError(f"{path}: a symbolic link loop (via {os.readlink(path)}); expected an audio file") from None
            raise TimnetError(f"{path}: a broken symbolic link (to {os.readlink(path)}); expected an audio file")
        raise TimnetError(f"{path}: " + ("not a regular file (a directory, pipe or device); expected an audio file" if path.exists()
                                         else "no such audio file"))
    try:
        if path.stat().st_size == 0:
            raise TimnetError(f"{path}: empty file, expected audio")
        check_container(path)
        with _decoder_quiet(path), open(path, "rb") as f, sf.SoundFile(f) as sound:  # the file object: see audio_info
            # as sf.read reads: from the start (libsndfile's MP3 decoder rounds otherwise) for
            # the frames the header declares (some codecs' files cannot seek without the count)
            sr, declared = sound.samplerate, sound.frames
            if sound.seekable():
                sound.seek(0)
            data = sound.read(declared, dtype="float32", always_2d=True)
            counted = sound.format != "MP3" or _mp3_counted(path)
    except (sf.LibsndfileError, RuntimeError, ValueError) as e:
        message = sndfile_message(e)
        raise TimnetError(f"{path}: not readable audio ({message})") from None
    except OSError as e:  # no permission, an I/O error on a flaky disk: one bad file, which --skip-bad may skip
        raise TimnetError(f"{path}: cannot be read ({e.strerror or e})") from None
    if not NATIVE_RATES[0] <= sr <= NATIVE_RATES[1]:  # resampling 2 Hz to 22050 would take gigabytes
        raise TimnetError(f"{path}: a sample rate of {sr} Hz in its header; expected {NATIVE_RATES[0]} to "
                          f"{NATIVE_RATES[1]} Hz (a damaged header?)")
    if data.shape[0] == 0:
        raise TimnetError(f"{path}: holds no audio samples; expected at least one")
    if counted and data.shape[0] < declared - MISSING_FRAMES:  # a decoder that stopped early: a cut MP3 reads as what is left
        raise TimnetError(f"{path}: truncated audio: its header declares {declared} samples, {data.shape[0]} could be read")
    if not np.isfinite(data).all():  # float files can; librosa would fail deep inside the STFT
        raise TimnetError(f"{path}: holds NaN or infinite samples; expected finite audio")
    # librosa.to_mono averages the channels; so do we, in float32 like librosa.
    y = data[:, 0] if data.shape[1] == 1 else np.mean(data, axis=1, dtype=np.float32)
    return np.ascontiguousarray(y, dtype=np.float32), int(sr)


def check_sample_rate(sample_rate) -> int:
    """`sample_rate` as a whole number of Hz within any recording's (NATIVE_RATES), or a one-line error:
    16 (kHz given for Hz) would resample 3 s of audio into 3,000 s."""
    ok = not isinstance(sample_rate, bool) and isinstance(sample_rate, (int, float, np.integer, np.floating))
    if not (ok and math.isfinite(sample_rate) and sample_rate > 0 and float(sample_rate).is_integer()):
        raise TimnetError(f"sample_rate {sample_rate!r} invalid; expected a positive whole number of Hz (e.g. 16000)")
    if not NATIVE_RATES[0] <= sample_rate <= NATIVE_RATES[1]:
        raise TimnetError(f"sample_rate {sample_rate!r} invalid; expected {NATIVE_RATES[0]} to {NATIVE_RATES[1]} Hz "
                          "(e.g. 16000; in Hz, not kHz)")
    return int(sample_rate)


def resample(y: np.ndarray, *, orig_sr: int, target_sr: int = SAMPLE_RATE) -> np.ndarray:
    """Resample exactly as `librosa.load(path, sr=target_sr)` does (soxr 'HQ', length fixed)."""
    if orig_sr == target_sr:
        return y
    import librosa

    return librosa.resample(y, orig_sr=orig_sr, target_sr=target_sr, res_type="soxr_hq")


def load_audio(path: str | Path, *, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Read a file as mono float32 at `sr` Hz, the way the authors' `librosa.load` call did."""
    y, native_sr = read_audio(path)
    return resample(y, orig_sr=native_sr, target_sr=sr)


def fit_length(y: np.ndarray, length: int) -> np.ndarray:
    """Centre-pad with zeros or centre-crop `y` to `length` samples (the authors' rule)."""
    n = len(y)
    if n < length:
        left = (length - n) // 2
        return np.pad(y, (left, length - n - left))
    start = (n - length) // 2
    return y[start : start + length]


@functools.lru_cache(maxsize=8)
def _mel_basis(sr: int) -> np.ndarray:
    import librosa

    return librosa.filters.mel(sr=sr, n_fft=N_FFT, n_mels=N_MELS)  # Slaney mel bands, librosa's defaults


@functools.lru_cache(maxsize=1)
def _blas():
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def mfcc(y: np.ndarray, *, sr: int = SAMPLE_RATE, n_mfcc: int = N_MFCC) -> np.ndarray:
    """MFCCs of `y` as (frames, n_mfcc) float32: `librosa.feature.mfcc` with its defaults, transposed.

    The same operations as librosa's, in the same order, except that the mel filter bank is
    built once per sample rate instead of once per call (half of the cost).
    """
    import librosa

    power = np.abs(librosa.stft(y, n_fft=N_FFT, hop_length=HOP_LENGTH)) ** 2
    # The mel product is a BLAS call whose last bits depend on its thread count; one thread makes
    # the features the same in every process, worker pool and machine load.
    with _blas().limit(limits=1, user_api="blas"):
        mel = np.einsum("...ft,mf->...mt", power, _mel_basis(sr), optimize=True)
    m = librosa.feature.mfcc(S=librosa.power_to_db(mel), n_mfcc=n_mfcc)
    return np.ascontiguousarray(m.T, dtype=np.float32)
