"""Shared fixtures: paths into ../shared (real-data tier) and small synthetic audio helpers."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
REFERENCE = SHARED / "reference" / "emodb_official_reference.npz"
PRETRAINED = SHARED / "pretrained"
DATA = SHARED / "data"


def need(path: Path) -> Path:
    """Skip the calling test, with the reason, when a ../shared resource is absent."""
    if not path.exists():
        pytest.skip(f"real-data tier: {path} is absent (CI provides ../shared beside the checkout)")
    return path


def ctrl_c_open() -> None:
    """preexec_fn of a command a test sends Ctrl-C to. A shell's background job (`make test &`, some
    CI runners) ignores SIGINT and a started process inherits that, so no Ctrl-C would reach it:
    reset to the default before the exec, Python installs its KeyboardInterrupt handler as in a terminal."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture(scope="session")
def reference():
    with np.load(need(REFERENCE)) as z:
        return {k: z[k] for k in z.files}


def write_tone(path: Path, *, seconds: float = 0.3, sr: int = 16000, channels: int = 1,
               subtype: str = "PCM_16", seed: int = 0, fmt: str | None = None) -> Path:
    """A short seeded noise-plus-tone file, so every synthetic utterance differs."""
    import soundfile as sf

    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    y = 0.3 * np.sin(2 * np.pi * (200 + 20 * seed) * t) + 0.05 * rng.standard_normal(len(t))
    data = np.stack([y * (1 - 0.2 * c) for c in range(channels)], axis=1) if channels > 1 else y
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), data.astype(np.float32), sr, subtype=subtype, format=fmt)
    return path


def flip_a_stored_byte(source: Path, out: Path) -> str:
    """Copy torch.save's zip `source` to `out` with one byte inside a tensor's stored bytes inverted,
    as a disk or a copy may damage it (the file stays a whole zip, which torch.load reads without
    complaint); returns the damaged record's name."""
    import struct
    import zipfile

    data = bytearray(source.read_bytes())
    with zipfile.ZipFile(source) as archive:
        record = next(i for i in archive.infolist() if "/data/" in i.filename and i.file_size > 16)
    at = record.header_offset
    name_length, extra_length = struct.unpack("<HH", data[at + 26:at + 30])  # the local header's own lengths
    data[at + 30 + name_length + extra_length + 8] ^= 0xFF
    out.write_bytes(bytes(data))
    return record.filename
