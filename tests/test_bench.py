"""`timnet bench` pieces, on shapes small enough for the fast tier."""
import numpy as np

from timnet.bench import (fold_epoch_seconds, format_bench, inference_utterances_per_second, matmul_gflops,
                          peak_rss_mb, synthetic_emodb)


def test_synthetic_emodb_shape():
    fs = synthetic_emodb()
    assert fs.x.shape == (535, 188, 39) and fs.x.dtype == np.float32 and set(fs.y) <= set(range(7))


def test_timers_return_positive_figures():
    fs = synthetic_emodb()
    fs.x, fs.y = fs.x[:120, :40], fs.y[:120]
    assert fold_epoch_seconds(fs, path="reference", threads=1, epochs=3) > 0
    assert fold_epoch_seconds(fs, path="fast", threads=1, epochs=3) > 0
    assert inference_utterances_per_second(fs, threads=1, repeats=1) > 0
    assert peak_rss_mb() > 10
    assert 0.1 < matmul_gflops(threads=1, n=256, repeats=2) < 1e5


def test_format_bench_table():
    r = {"epoch_s": {"reference": 0.8, "fast": 0.4, "fast_all_folds": 4.0, "fast_one_fold": 0.5},
         "kernels": "native", "infer_utt_per_s": 900.0,
         "extract_s": 5.0, "extract_files_per_s": 107.0, "extract_x_realtime": 300.0, "peak_rss_mb": 500.0}
    table = format_bench(r)
    assert "2.00x" in table and "extraction of EMODB" in table and table.count("\n") == 11
    r["extract_files"] = 4  # a part of the corpus: the row says how many files were timed
    assert "extraction of EMODB (4 files): s" in format_bench(r)
    r["machine"] = {"matmul_gflops": 125.4}
    assert format_bench(r).splitlines()[-1].split()[-1] == "125"


def test_bad_options_refused_before_the_timings(tmp_path):
    import pytest

    from timnet.bench import run_bench
    from timnet.errors import TimnetError

    def never(message):  # the first timing logs before it starts: reaching it fails the test
        raise AssertionError(f"timing started: {message}")

    with pytest.raises(TimnetError, match="--workers 0 invalid"):
        run_bench(workers=0, log=never)
    with pytest.raises(TimnetError, match="nope"):
        run_bench(data_dir=tmp_path / "nope", log=never)
    # an unreadable file of the tree, too: not after minutes of timings
    (tmp_path / "emodb" / "wav").mkdir(parents=True)
    (tmp_path / "emodb" / "wav" / "03a01Fa.wav").write_bytes(b"not audio")
    with pytest.raises(TimnetError, match="03a01Fa.wav: not readable audio"):
        run_bench(data_dir=tmp_path / "emodb", log=never)
    # a file whose header reads but whose samples are cut short: found by the extraction, which is
    # timed first, and said without extract's --skip-bad, which bench has not
    from conftest import write_tone

    good = write_tone(tmp_path / "good.wav", seconds=1.0)
    (tmp_path / "emodb" / "wav" / "03a01Fa.wav").write_bytes(good.read_bytes()[:20000])
    write_tone(tmp_path / "emodb" / "wav" / "03a01Nc.wav", seconds=1.0, seed=1)

    def extraction_only(message):
        if not message.startswith("timing extraction"):
            never(message)

    with pytest.raises(TimnetError, match=r"03a01Fa.wav: .*truncated.*; --data expects the EMODB tree, every file readable$") as e:
        run_bench(data_dir=tmp_path / "emodb", log=extraction_only)
    assert "skip-bad" not in str(e.value)


def test_a_busy_machine_is_said_before_the_timings(monkeypatch):
    """Timings taken while other processes hold the cores are slow and their ratios skewed: said
    (and recorded in the JSON's machine), not left to be read as this machine's speed."""
    import os
    import warnings

    import pytest

    from timnet import bench

    class Stop(Exception):
        pass

    def stop(message):
        raise Stop

    monkeypatch.setattr(os, "getloadavg", lambda: (1.7, 1.0, 0.5))
    with pytest.warns(UserWarning, match=r"other processes keep 1\.7 of \d+ cores busy .* ratios skewed"), \
            pytest.raises(Stop):
        bench.run_bench(log=stop)
    monkeypatch.setattr(os, "getloadavg", lambda: (0.1, 0.1, 0.1))
    with warnings.catch_warnings(), pytest.raises(Stop):  # an idle machine: no warning (it would be an error here)
        warnings.simplefilter("error")
        bench.run_bench(log=stop)
