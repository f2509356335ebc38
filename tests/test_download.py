"""`timnet download` against a real HTTP server on 127.0.0.1: resume, verification, safe unpacking."""
import hashlib
import http.server
import io
import subprocess
import sys
import threading
import zipfile

import pytest

from timnet.download import download, unpack
from timnet.errors import TimnetError


class Handler(http.server.BaseHTTPRequestHandler):
    """Serves /corpus.zip with Range support; the first full request is cut off half-way. `script`
    holds answers to give first, one per request: an HTTP error code, or ("from", n) for a 206
    whose part starts at byte n whatever was asked."""

    payload = b""
    cut_first = True
    requests: list = []
    script: list = []
    replaced_by = None  # the file the publisher puts in place once the first request is cut

    def do_GET(self):
        rng = self.headers.get("Range")
        Handler.requests.append(rng)
        etag = f'"{hashlib.sha256(Handler.payload).hexdigest()[:16]}"'
        if self.headers.get("If-Range") not in (None, etag):  # changed since: the whole new file
            rng = None
        start = int(rng.split("=")[1].split("-")[0]) if rng else 0
        answer = Handler.script.pop(0) if Handler.script else None  # None: answer as a good server does
        if isinstance(answer, int):
            self.send_response(answer)
            if answer == 416:
                self.send_header("Content-Range", f"bytes */{len(Handler.payload)}")
            if answer == 503:
                self.send_header("Retry-After", "7")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if answer is not None:
            start, rng = answer[1], True
        if rng and start >= len(Handler.payload):
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(Handler.payload)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = Handler.payload[start:]
        self.send_response(206 if rng else 200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("ETag", etag)
        if rng:
            self.send_header("Content-Range", f"bytes {start}-{len(Handler.payload) - 1}/{len(Handler.payload)}")
        self.end_headers()
        if Handler.cut_first and not rng:
            Handler.cut_first = False
            self.wfile.write(body[: len(body) // 2])  # then the connection drops
            self.wfile.flush()
            self.close_connection = True
            if Handler.replaced_by is not None:
                Handler.payload, Handler.replaced_by = Handler.replaced_by, None
            return
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/corpus.zip"
    httpd.shutdown()


def make_zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


def test_resumed_download_and_altered_file_named(server, tmp_path):
    files = {f"wav/03a0{i}Wa.wav": bytes([i]) * 200_000 for i in range(1, 4)}
    Handler.payload, Handler.cut_first, Handler.requests = make_zip(files), True, []
    manifest = {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
    manifest["wav/03a02Wa.wav"] = "0" * 64  # the publisher's hash differs from what we serve
    n, report = download("emodb", tmp_path / "EMODB", url=server, manifest=manifest, progress=False)
    assert n == 3 and report.missing == [] and report.altered == ["wav/03a02Wa.wav"] and report.matched == 2
    assert Handler.requests[0] is None and Handler.requests[1].startswith("bytes=")  # resumed, not restarted
    assert (tmp_path / "EMODB" / "wav" / "03a01Wa.wav").read_bytes() == files["wav/03a01Wa.wav"]


def test_traversal_and_symlink_members_refused(tmp_path):
    evil = tmp_path / "evil.zip"
    evil.write_bytes(make_zip({"wav/ok.wav": b"x", "../escape.txt": b"gotcha"}))
    with pytest.raises(TimnetError, match="outside"):
        unpack(evil, tmp_path / "root")
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path / "root" / "wav" / "ok.wav").exists()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        info = zipfile.ZipInfo("wav/link.wav")
        info.external_attr = (0o120777 << 16)
        z.writestr(info, "/etc/passwd")
    (tmp_path / "link.zip").write_bytes(buf.getvalue())
    with pytest.raises(TimnetError, match="symbolic link"):
        unpack(tmp_path / "link.zip", tmp_path / "root2")


def test_cli_traversal_archive_over_http(server, tmp_path):
    Handler.payload, Handler.cut_first, Handler.requests = make_zip({"../../x.txt": b"no"}), False, []
    r = subprocess.run([sys.executable, "-m", "timnet", "download", "ravdess", str(tmp_path / "R"), "--url", server, "-q"],
                       capture_output=True, text=True)
    assert r.returncode == 1 and "would be written outside" in r.stderr
    assert not (tmp_path / "x.txt").exists()


def test_corpora_without_public_download(tmp_path):
    with pytest.raises(TimnetError, match="IEMOCAP has no public download: .*sail.usc.edu"):
        download("iemocap", tmp_path)


def test_damaged_archive_and_bad_url_are_one_error_leaving_no_half_file(tmp_path):
    good = make_zip({"wav/03a01Wa.wav": b"RIFF" + bytes(range(256)) * 64})
    crc = bytearray(good)
    crc[good.index(b"RIFF") + 100] ^= 1  # stored member: one changed byte fails its CRC
    (tmp_path / "crc.zip").write_bytes(bytes(crc))
    with pytest.raises(TimnetError, match=r"crc.zip: damaged archive \(wav/03a01Wa.wav: Bad CRC-32"):
        unpack(tmp_path / "crc.zip", tmp_path / "root")
    assert not list((tmp_path / "root").rglob("*.wav*"))  # neither the file nor its .part
    for url in ("notaurl", "http://[::1/x.zip"):
        with pytest.raises(TimnetError, match=f"--url {url.replace('[', '.')}: not a URL"):
            download("emodb", tmp_path / "E", url=url, progress=False)
    assert not (tmp_path / "E").exists()


def test_a_whole_archive_is_not_downloaded_again(server, tmp_path):
    files = {"wav/03a01Wa.wav": b"a" * 1000}
    Handler.payload, Handler.cut_first, Handler.requests = make_zip(files), False, []
    manifest = {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
    download("emodb", tmp_path / "EMODB", url=server, manifest=manifest, progress=False)
    download("emodb", tmp_path / "EMODB", url=server, manifest=manifest, progress=False)
    assert len(Handler.requests) == 1


def test_an_address_that_cannot_work_is_not_called_an_interruption(tmp_path):
    """Nor retried, nor leaving folders behind; a copy in another format, or DIR a file, is said so."""
    (tmp_path / "folder").mkdir()
    for url in (f"file://{tmp_path}/missing.zip", "http:///x.zip", f"file://{tmp_path}/folder/"):
        with pytest.raises(TimnetError, match="cannot be downloaded .*; check the address$"):
            download("emodb", tmp_path / "E", url=url, progress=False)
        assert not (tmp_path / "E").exists()
    import tarfile

    with tarfile.open(tmp_path / "mine.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "folder", arcname="wav")
    with pytest.raises(TimnetError, match=r"mine.tar.gz: a tar archive, not a zip; expected a .zip \(or unpack it yourself"):
        download("emodb", tmp_path / "E", url=f"file://{tmp_path}/mine.tar.gz", progress=False)
    (tmp_path / "afile").write_text("mine")
    with pytest.raises(TimnetError, match=r"afile is a file; expected a folder to unpack EMODB into"):
        download("emodb", tmp_path / "afile", url=f"file://{tmp_path}/mine.tar.gz", progress=False)
    assert (tmp_path / "afile").read_text() == "mine"


def test_a_member_named_like_another_members_temporary_file_is_unpacked_whole(tmp_path):
    files = {"wav/a.wav": b"first" * 100, "wav/a.wav.part": b"second" * 100}
    (tmp_path / "c.zip").write_bytes(make_zip(files))
    assert unpack(tmp_path / "c.zip", tmp_path / "root") == 2
    for name, data in files.items():
        assert (tmp_path / "root" / name).read_bytes() == data
    assert sorted(p.name for p in (tmp_path / "root" / "wav").iterdir()) == ["a.wav", "a.wav.part"]


def test_an_encrypted_member_is_one_error_and_no_file(tmp_path):
    data = bytearray(make_zip({"wav/03a01Wa.wav": b"RIFF" * 100}))
    central = data.index(b"PK\x01\x02")
    data[central + 8] |= 1  # general-purpose flag bit 0: encrypted
    (tmp_path / "enc.zip").write_bytes(bytes(data))
    with pytest.raises(TimnetError, match=r"enc.zip: cannot unpack wav/03a01Wa.wav \(.*encrypted.*\); unpack the archive"):
        unpack(tmp_path / "enc.zip", tmp_path / "root")
    assert not [p for p in (tmp_path / "root").rglob("*") if p.is_file()]


def test_another_address_with_the_same_file_name_is_another_archive(server, tmp_path):
    manifest = {}
    Handler.payload, Handler.cut_first, Handler.requests = make_zip({"wav/03a01Wa.wav": b"old"}), False, []
    download("emodb", tmp_path / "EMODB", url=server, manifest=manifest, progress=False)
    Handler.payload = make_zip({"wav/03a01Wa.wav": b"new"})
    download("emodb", tmp_path / "EMODB", url=server + "?v=2", manifest=manifest, progress=False)
    assert (tmp_path / "EMODB" / "wav" / "03a01Wa.wav").read_bytes() == b"new"
    assert len(Handler.requests) == 2


def test_a_busy_name_server_is_an_interruption_worth_retrying(tmp_path, monkeypatch):
    import socket
    import urllib.error
    import urllib.request

    calls = []

    def busy(request, timeout):
        calls.append(request.full_url)
        raise urllib.error.URLError(socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution"))

    monkeypatch.setattr(urllib.request, "urlopen", busy)
    monkeypatch.setattr("timnet.download.RETRY_SECONDS", 0.0)
    with pytest.raises(TimnetError, match="download interrupted .*run the same command again"):
        download("emodb", tmp_path / "E", url="http://example.invalid/x.zip", progress=False)
    assert len(calls) == 3  # retried, not given up at once


def test_a_full_disk_is_said_and_not_retried(server, tmp_path, monkeypatch):
    """A write to this machine's disk that fails is no interrupted download: said at once."""
    import errno

    import timnet.download

    Handler.payload, Handler.cut_first, Handler.requests = make_zip({"wav/03a01Wa.wav": b"x" * 1000}), False, []
    real_open = open

    class Full:  # the .part file opens, and every write finds the disk full
        def __init__(self, *args):
            self.file = real_open(*args)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()

        def write(self, block):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(timnet.download, "open", Full, raising=False)
    with pytest.raises(TimnetError, match=r"\.part: cannot be written \(No space left on device\); free space"):
        download("emodb", tmp_path / "E", url=server, progress=False)
    assert len(Handler.requests) == 1  # not retried


def test_the_download_is_checked_as_corpora_check_checks_it(server, tmp_path):
    """download verifies through check_tree: a mirror's top folder (EmoDB/wav/...) is found by name,
    as `extract` finds it, not called missing; a corpus with no checksums shipped is said so and its
    counts checked (a short tree is exit 1), not reported verified."""
    files = {f"EmoDB/wav/03a0{i}Wa.wav": bytes([i]) * 1000 for i in range(1, 3)}
    Handler.payload, Handler.cut_first, Handler.requests = make_zip(files), False, []
    manifest = {name.removeprefix("EmoDB/"): hashlib.sha256(data).hexdigest() for name, data in files.items()}
    n, report = download("emodb", tmp_path / "E", url=server, manifest=manifest, progress=False)
    assert n == 2 and report.missing == [] and report.altered == [] and report.matched == 2
    Handler.payload = make_zip({"casia/liuchanhg/angry/201.wav": b"RIFF" * 100})
    r = subprocess.run([sys.executable, "-m", "timnet", "download", "casia", str(tmp_path / "C"), "--url", server, "-q"],
                       capture_output=True, text=True)
    assert r.returncode == 1 and "1 files unpacked" in r.stdout and "PROBLEMS FOUND" in r.stdout, r.stdout + r.stderr
    assert r.stderr.startswith(f"timnet: error: {tmp_path / 'C'}") and r.stderr.count("\n") == 1, r.stderr  # for a script
    assert "checksums: none shipped for CASIA" in r.stdout and "against the manifest" not in r.stdout



def test_a_server_in_passing_trouble_is_retried_and_a_misplaced_part_not_appended(server, tmp_path, monkeypatch):
    """503 and 429 are tried again (404 is not); a 206 whose Content-Range starts elsewhere than the
    bytes held, and a 416 saying the file is shorter than the part, start over: never a spliced archive."""
    from timnet.download import fetch

    monkeypatch.setattr("timnet.download.RETRY_SECONDS", 0.0)
    waits = []
    monkeypatch.setattr("timnet.download.time.sleep", waits.append)
    payload = make_zip({f"wav/03a0{i}Wa.wav": bytes([i]) * 50_000 for i in range(1, 3)})

    def get(name, script, cut_first=False, part=None):
        Handler.payload, Handler.cut_first, Handler.requests, Handler.script = payload, cut_first, [], script
        dest = tmp_path / name / "corpus.zip"
        dest.parent.mkdir()
        if part is not None:
            (dest.parent / "corpus.zip.part").write_bytes(part)
        assert fetch(server, dest, progress=False).read_bytes() == payload
        assert Handler.script == []
        return Handler.requests

    assert get("busy", [503, 429]) == [None, None, None] and waits == [7.0, 0.0]  # as long as the 503 asked
    half = f"bytes={len(payload) // 2}-"
    assert get("misplaced", [None, ("from", 10)], cut_first=True) == [None, half, None]  # not appended at 10
    assert get("replaced", [], part=payload + b"old tail") == [f"bytes={len(payload) + 8}-", None]
    assert get("whole", [], part=payload) == [f"bytes={len(payload)}-"]  # 416, and the length fits
    Handler.script = [404]
    with pytest.raises(TimnetError, match=r"HTTP 404 Not Found$"):
        fetch(server, tmp_path / "gone" / "corpus.zip", progress=False)
    assert Handler.requests[-1] is None and Handler.script == []  # not tried again


def test_a_file_replaced_on_the_server_mid_download_comes_whole(server, tmp_path, monkeypatch):
    """The part's ETag goes back as If-Range: a publisher's new file since the cut is sent whole,
    not its tail spliced onto the old file's head."""
    from timnet.download import fetch

    monkeypatch.setattr("timnet.download.RETRY_SECONDS", 0.0)
    old, new = make_zip({"wav/03a01Wa.wav": b"o" * 90_000}), make_zip({"wav/03a01Wa.wav": b"n" * 90_000})
    assert len(old) == len(new)
    Handler.payload, Handler.cut_first, Handler.requests, Handler.replaced_by = old, True, [], new
    dest = tmp_path / "corpus.zip"
    assert fetch(server, dest, progress=False).read_bytes() == new
    assert Handler.requests == [None, f"bytes={len(old) // 2}-"] and not list(tmp_path.glob("*.part*"))


def test_an_empty_dir_is_refused_not_the_current_folder(tmp_path, monkeypatch, capsys):
    """`timnet download emodb "$UNSET"` once unpacked into the current folder."""
    from timnet.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["download", "emodb", "", "--url", f"file://{tmp_path}/x.zip", "-q"]) == 1
    assert capsys.readouterr().err == "timnet: error: DIR '': empty path; expected a file or folder name\n"
    assert main(["organize", "emodb", str(tmp_path), ""]) == 1
    assert "timnet: error: OUT '': empty path" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
