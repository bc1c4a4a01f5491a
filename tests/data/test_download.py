"""``python -m see_dml.data.download`` against a loopback HTTP server.

The server (127.0.0.1, a port of its own, stopped at the end of the module or after two
minutes, whichever comes first) serves archives packed here from the tiny fixtures of
``dataset_fixtures`` in each dataset's official archive format: CUB's ``.tgz`` with the
``CUB_200_2011/`` top folder and ``attributes.txt`` beside it, SOP's ``.zip`` with its
``Stanford_Online_Products/`` folder, Cars' ``car_ims.tgz`` + ``cars_annos.mat``, In-Shop's
``img.zip`` (``img/...``) + ``list_eval_partition.txt``. Every source is pointed at it with
``base_url``; nothing is fetched from anywhere else.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import io
import json
import os
import subprocess
import sys
import tarfile
import threading
import zipfile
from collections import Counter
from pathlib import Path

import hydra
import pytest
from hydra import compose, initialize_config_dir

from helpers.dataset_fixtures import make_cars, make_cub, make_inshop, make_sop
from see_dml.data import download as dl
from see_dml.runtime.config import CONFIG_DIR

LENIENT = ["dataset.strict_counts=false"]


class _Server(http.server.ThreadingHTTPServer):
    files: dict[str, bytes]
    drop: set[str]
    requests: Counter


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:  # noqa: N802 (the http.server name)
        name = self.path.lstrip("/")
        self.server.requests[name] += 1
        body = self.server.files.get(name)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if name in self.server.drop:  # half the bytes, then the connection goes away
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def _tar(members: dict[str, Path | bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for arcname, src in members.items():
            if isinstance(src, bytes):
                info = tarfile.TarInfo(arcname)
                info.size = len(src)
                tar.addfile(info, io.BytesIO(src))
            else:
                tar.add(src, arcname=arcname)
    return buf.getvalue()


def _zip(folder: Path, prefix: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for path in sorted(folder.rglob("*")):
            rel = path.relative_to(folder).as_posix()
            zf.write(path, f"{prefix}/{rel}" + ("/" if path.is_dir() else ""))
    return buf.getvalue()


@dataclasses.dataclass
class Packed:
    files: dict[str, bytes]          # official file name -> bytes
    counts: dict[str, dict[str, int]]  # the fixture's splits before any val

    def md5(self, name: str) -> str:
        return hashlib.md5(self.files[name]).hexdigest()

    def sha256(self, name: str) -> str:
        return hashlib.sha256(self.files[name]).hexdigest()


@pytest.fixture(scope="module")
def packed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Packed]:
    src = tmp_path_factory.mktemp("fixtures")
    cub = make_cub(src / "CUB_200_2011")
    sop = make_sop(src / "Stanford_Online_Products")
    cars = make_cars(src / "cars")
    inshop = make_inshop(src / "inshop")
    return {
        "cub": Packed({"CUB_200_2011.tgz": _tar({"CUB_200_2011": cub.root,
                                                  "attributes.txt": b"1 has_bill_shape\n"})},
                      cub.counts),
        "sop": Packed({"Stanford_Online_Products.zip": _zip(sop.root,
                                                            "Stanford_Online_Products")},
                      sop.counts),
        "cars": Packed({"car_ims.tgz": _tar({"car_ims": cars.root / "car_ims"}),
                        "cars_annos.mat": (cars.root / "cars_annos.mat").read_bytes()},
                       cars.counts),
        "inshop": Packed({"img.zip": _zip(inshop.root / "img", "img"),
                          "list_eval_partition.txt":
                              (inshop.root / "Eval" / "list_eval_partition.txt").read_bytes()},
                         inshop.counts),
    }


@pytest.fixture(scope="module")
def server(packed: dict[str, Packed]):
    srv = _Server(("127.0.0.1", 0), _Handler)
    srv.files = {n: b for p in packed.values() for n, b in p.files.items()}
    srv.drop = set()
    srv.requests = Counter()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    stop = threading.Timer(120, srv.shutdown)  # bounded even if teardown never runs
    stop.daemon = True
    stop.start()
    yield srv
    stop.cancel()
    srv.shutdown()
    srv.server_close()


@pytest.fixture(autouse=True)
def _loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every transfer these tests start goes to 127.0.0.1, or the test fails."""
    real = dl._downloader

    def guarded(url: str, *args: object) -> object:
        assert url.startswith("http://127.0.0.1:"), f"a test tried to fetch {url}"
        return real(url, *args)

    monkeypatch.setattr(dl, "_downloader", guarded)


def _url(srv: _Server) -> str:
    return f"http://127.0.0.1:{srv.server_address[1]}"


def _run(tmp: Path, name: str, *overrides: str, base_url: str | None = None) -> tuple[int, Path]:
    """One download in-process: ``(status, dataset.root)``."""
    root = tmp / "data" / name
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("download", overrides=[
            f"dataset={name}", f"dataset.root={root}", *LENIENT, "progress=false",
            "check.workers=1", "timeout=10", f"base_url={base_url or 'null'}", *overrides])
    source = hydra.utils.instantiate(cfg.dataset)
    return dl.download(cfg, source), root


def _counts(out: str) -> dict[str, dict[str, int]]:
    return json.loads(out.strip().splitlines()[-1])


def _known_md5(monkeypatch: pytest.MonkeyPatch, name: str, md5: str) -> None:
    """Record ``md5`` as the hash of dataset ``name``'s single archive (the tiny fixture
    cannot have the real archive's MD5)."""
    files = dl.SOURCES[name]
    res = dataclasses.replace(files.resources[0], hash=f"md5:{md5}")
    monkeypatch.setitem(dl.SOURCES, name, dataclasses.replace(files, resources=(res,)))


def _check_counts(counts: dict, expected: dict) -> None:
    for split, want in expected.items():
        if split == "train":  # the held-out val classes come out of train
            got = counts["train"]["images"] + counts.get("val", {"images": 0})["images"]
            assert got == want["images"]
        else:
            assert counts[split] == want


@pytest.mark.parametrize("name", ["cub", "sop", "cars", "inshop"])
def test_download_unpack_check(name: str, tmp_path: Path, packed: dict[str, Packed],
                               server: _Server, monkeypatch: pytest.MonkeyPatch,
                               capsys: pytest.CaptureFixture[str]) -> None:
    p = packed[name]
    overrides: list[str] = []
    if name in ("cub", "sop"):   # the recorded MD5, as for the real archive
        _known_md5(monkeypatch, name, p.md5(next(iter(p.files))))
    elif name == "cars":         # a copy that is not the original: its own SHA-256s
        overrides = [f"+sha256.images={p.sha256('car_ims.tgz')}",
                     f"+sha256.annotations={p.sha256('cars_annos.mat')}"]
    before = Counter(server.requests)
    status, root = _run(tmp_path, name, *overrides, base_url=_url(server))
    out, err = capsys.readouterr()
    assert status == 0, err
    _check_counts(_counts(out), p.counts)
    assert "unreadable images: 0" in out
    for fname in p.files:
        assert server.requests[fname] - before[fname] == 1
        assert (tmp_path / "data" / "downloads" / fname).is_file()
    layout = {"cub": ["images.txt", "image_class_labels.txt", "images", "attributes.txt"],
              "sop": ["Ebay_train.txt", "Ebay_test.txt", "bicycle_final"],
              "cars": ["cars_annos.mat", "car_ims/000001.jpg"],
              "inshop": ["Eval/list_eval_partition.txt", "Img/img"]}[name]
    for rel in layout:
        assert (root / rel).exists(), rel
    assert not list((tmp_path / "data" / "downloads").glob("*.part"))
    if name == "inshop":  # no known hash: fetched unverified, its SHA-256 recorded after check
        assert "NOT verified" in err
        side = tmp_path / "data" / "downloads" / "img.zip.sha256"
        assert side.read_text().split()[0] == p.sha256("img.zip")
    else:
        assert "NOT verified" not in err


def test_present_archive_not_fetched_again(tmp_path: Path, packed: dict[str, Packed],
                                           server: _Server, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    _known_md5(monkeypatch, "cub", packed["cub"].md5("CUB_200_2011.tgz"))
    assert _run(tmp_path, "cub", base_url=_url(server))[0] == 0
    n = server.requests["CUB_200_2011.tgz"]
    capsys.readouterr()
    status, root = _run(tmp_path, "cub", base_url=_url(server))
    out, err = capsys.readouterr()
    assert status == 0
    assert server.requests["CUB_200_2011.tgz"] == n
    assert "hash verified: not fetched" in err and "already unpacked" in err
    # In-Shop: the second run verifies the files against the SHA-256 the first one recorded.
    assert _run(tmp_path, "inshop", base_url=_url(server))[0] == 0
    n = server.requests["img.zip"]
    capsys.readouterr()
    assert _run(tmp_path, "inshop", base_url=_url(server))[0] == 0
    assert server.requests["img.zip"] == n
    assert "NOT verified" not in capsys.readouterr().err


def test_wrong_hash_moved_aside(tmp_path: Path, server: _Server,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    _known_md5(monkeypatch, "sop", "0" * 32)
    with pytest.raises(dl.DownloadError) as info:
        _run(tmp_path, "sop", base_url=_url(server))
    msg = str(info.value)
    assert "\n" not in msg
    assert "Stanford_Online_Products.zip" in msg and f"md5:{'0' * 32}" in msg
    downloads = tmp_path / "data" / "downloads"
    assert not (downloads / "Stanford_Online_Products.zip").exists()
    aside = list(downloads.glob("Stanford_Online_Products.zip.bad-*"))
    assert len(aside) == 1 and str(aside[0]) in msg
    assert hashlib.md5(aside[0].read_bytes()).hexdigest() in msg
    assert not (tmp_path / "data" / "sop").exists(), "a file with a wrong hash was unpacked"


def test_dropped_connection_leaves_no_file(tmp_path: Path, packed: dict[str, Packed],
                                           server: _Server,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    _known_md5(monkeypatch, "cub", packed["cub"].md5("CUB_200_2011.tgz"))
    server.drop.add("CUB_200_2011.tgz")
    before = server.requests["CUB_200_2011.tgz"]
    try:
        with pytest.raises(dl.DownloadError, match="could not be fetched"):
            _run(tmp_path, "cub", "retries=1", base_url=_url(server))
    finally:
        server.drop.discard("CUB_200_2011.tgz")
    assert server.requests["CUB_200_2011.tgz"] - before == 2   # one retry
    assert not (tmp_path / "data").exists()  # no file, and no empty downloads/ either


def test_a_file_the_server_does_not_have_is_asked_for_once(tmp_path: Path, server: _Server,
                                                            capsys) -> None:
    """HTTP 404: no retry (it was retried as a dropped connection is), one short reason, and
    no empty downloads/ left."""
    real = server.files.pop("CUB_200_2011.tgz")
    before = server.requests["CUB_200_2011.tgz"]
    try:
        with pytest.raises(dl.DownloadError) as info:
            _run(tmp_path, "cub", "retries=3", base_url=_url(server))
    finally:
        server.files["CUB_200_2011.tgz"] = real
    assert server.requests["CUB_200_2011.tgz"] - before == 1
    assert str(info.value) == (f"CUB_200_2011.tgz: could not be fetched ({_url(server)}/"
                               "CUB_200_2011.tgz: HTTP 404 Not Found)")
    assert "data.caltech.edu" in capsys.readouterr().err  # the way by hand, said first
    assert not (tmp_path / "data").exists()


def test_unverified_non_archive_moved_aside(tmp_path: Path, server: _Server) -> None:
    """A file host's HTML page instead of img.zip (no hash to catch it): not kept as img.zip."""
    real = server.files["img.zip"]
    server.files["img.zip"] = b"<html>Google Drive can't scan this file for viruses</html>"
    try:
        with pytest.raises(dl.DownloadError, match="cannot be unpacked"):
            _run(tmp_path, "inshop", base_url=_url(server))
    finally:
        server.files["img.zip"] = real
    downloads = tmp_path / "data" / "downloads"
    assert not (downloads / "img.zip").exists()
    assert len(list(downloads.glob("img.zip.bad-*"))) == 1


def test_bad_copy_in_download_dir_replaced(tmp_path: Path, packed: dict[str, Packed],
                                           server: _Server, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    _known_md5(monkeypatch, "cub", packed["cub"].md5("CUB_200_2011.tgz"))
    downloads = tmp_path / "data" / "downloads"
    downloads.mkdir(parents=True)
    (downloads / "CUB_200_2011.tgz").write_bytes(b"half an archive")
    before = server.requests["CUB_200_2011.tgz"]
    assert _run(tmp_path, "cub", base_url=_url(server))[0] == 0
    assert server.requests["CUB_200_2011.tgz"] - before == 1
    assert "moved aside" in capsys.readouterr().err
    assert len(list(downloads.glob("CUB_200_2011.tgz.bad-*"))) == 1


def test_archive_list_two_files(tmp_path: Path, packed: dict[str, Packed], server: _Server,
                                capsys: pytest.CaptureFixture[str]) -> None:
    """Cars from two files fetched elsewhere; nothing is requested from the server."""
    p = packed["cars"]
    for fname, body in p.files.items():
        (tmp_path / fname).write_bytes(body)
    before = sum(server.requests.values())
    status, root = _run(tmp_path, "cars",
                        f"archive=[{tmp_path / 'car_ims.tgz'},{tmp_path / 'cars_annos.mat'}]",
                        f"+sha256.images={p.sha256('car_ims.tgz')}",
                        f"+sha256.annotations={p.sha256('cars_annos.mat')}")
    out, _ = capsys.readouterr()
    assert status == 0
    _check_counts(_counts(out), p.counts)
    assert sum(server.requests.values()) == before
    with pytest.raises(dl.DownloadError, match="ambiguous"):
        _run(tmp_path, "cars", f"sha256={p.sha256('car_ims.tgz')}")
    with pytest.raises(dl.DownloadError, match="not a SHA-256"):
        _run(tmp_path, "cars", "+sha256.images=abc")


def test_flags_translate_to_overrides() -> None:
    assert dl._translate_flags(["dataset=cars", "--archive", "/a/car_ims.tgz",
                                "--archive=/b c/cars_annos.mat", "--sha256", "ab"]) == [
        "dataset=cars", "sha256=ab", "archive=[/a/car_ims.tgz,'/b c/cars_annos.mat']"]


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory: pytest.TempPathFactory,
             packed: dict[str, Packed]) -> dict[str, subprocess.CompletedProcess]:
    """The command as typed, offline (``--archive``), two at once (each imports torch)."""
    base = tmp_path_factory.mktemp("cli")
    archives = base / "fetched_elsewhere"
    archives.mkdir()
    for p in packed.values():
        for fname, body in p.files.items():
            (archives / fname).write_bytes(body)
    sop_sha = packed["sop"].sha256("Stanford_Online_Products.zip")
    cases = {
        # --sha256: the fixture is not the real archive, so its own hash replaces the MD5
        "sop": ["dataset=sop", "--archive", str(archives / "Stanford_Online_Products.zip"),
                "--sha256", sop_sha],
        # the recorded MD5 of the real CUB_200_2011.tgz: the fixture does not have it
        "cub_wrong": ["dataset=cub", f"archive={archives / 'CUB_200_2011.tgz'}"],
    }
    env = {**os.environ, "SEE_DML_DOWNLOAD_BASE_URL": "", "OMP_NUM_THREADS": "1"}
    procs = {}
    for name, args in cases.items():
        root = base / name / "root"
        procs[name] = subprocess.Popen(
            [sys.executable, "-m", "see_dml.data.download", *args, f"dataset.root={root}",
             *LENIENT, "progress=false", "check.workers=1"],
            cwd=base, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    runs = {}
    for name, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=180)
        runs[name] = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    return runs


def test_cli_archive(cli_runs: dict, packed: dict[str, Packed]) -> None:
    run = cli_runs["sop"]
    assert run.returncode == 0, run.stderr
    _check_counts(_counts(run.stdout), packed["sop"].counts)


def test_cli_wrong_hash_one_line(cli_runs: dict) -> None:
    run = cli_runs["cub_wrong"]
    assert run.returncode == 2
    lines = [ln for ln in run.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1
    assert "CUB_200_2011.tgz" in lines[0] and "md5:97eceeb196236b17998738112f37df78" in lines[0]
    assert "Traceback" not in run.stderr


def test_no_source_prints_manual_route(tmp_path: Path) -> None:
    with pytest.raises(dl.DownloadError) as info:
        _run(tmp_path, "cars")
    msg = str(info.value)
    assert "no source" in msg and "car_ims.tgz" in msg and "archive=" in msg
    assert "d5c8f0aa497503f355e17dc7886c3f14" in msg
