"""Fetch a dataset, verify it by hash, unpack it where ``dataset.root`` expects it, check it.

    python -m see_dml.data.download dataset=cub dataset.root=/data/CUB_200_2011
    python -m see_dml.data.download dataset=sop archive=/scratch/Stanford_Online_Products.zip
    see-dml-download dataset=inshop --archive img.zip --archive list_eval_partition.txt

Each dataset is a few files (:data:`SOURCES`): an archive of images and, for Cars-196 and
In-Shop, an index beside it. Each file is fetched (with pooch's downloaders: progress bar,
HTTP or FTP) into ``download_dir`` under its official name, unless a file of that name with
the right hash is there already; it is verified before anything is unpacked; then unpacked
so that ``dataset.root`` holds exactly the layout its loader reads; then ``data.check`` runs
on it and its counts are printed (the last stdout line is its JSON object).

A transfer goes to ``<name>.part`` and takes its name only once complete, so a dropped
connection leaves nothing that a later run could mistake for the archive. A file whose hash
is wrong is moved aside to ``<name>.bad-<hash>`` and the run stops with one line naming the
file and both hashes.

Where no hash is recorded (In-Shop, whose only source is a Google Drive folder), the file is
fetched unverified and said to be; once it has unpacked and passed ``data.check`` its SHA-256
is written beside it (``<name>.sha256``), and every later run verifies it against that. Pass
``sha256=<hex>`` to verify it from the start.

``--archive X`` and ``--sha256 X`` are accepted as spellings of ``archive=X`` and
``sha256=X``. Exit status: 0 done; 2 (:data:`see_dml.runtime.errors.USER_ERROR_STATUS`, as every
tool) the files cannot be had or do not match (one ``error:`` line, and the manual route
where there is no source), or they unpacked but the dataset is unusable (as ``data.check``).

Why not ``pooch.retrieve``: it fetches one URL into a temporary file, checks the hash and
moves the file into place, which is the core here too (its downloaders do the transfer).
What it lacks, and this module adds: fallback sources tried in order, a bounded number of
retries per source, a file with a wrong hash moved aside (``retrieve`` deletes it), files
with no recorded hash fetched unverified and their hash recorded once they pass
``data.check``, an ``archive=`` fetched elsewhere, and unpacking that strips a top folder
and refuses members that point outside the dataset folder (``..``, absolute names).
"""

from __future__ import annotations

import json
import shutil
import sys
import tarfile
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any

import hydra
from omegaconf import DictConfig, ListConfig

from see_dml.data.base import DatasetSource
from see_dml.data.validation import check_source, format_report
from see_dml.runtime.cli import exit_with_error
from see_dml.runtime.config import CONFIG_DIR, hydra_main
from see_dml.runtime.errors import USER_ERROR_STATUS

#: name of the file in ``dataset.root`` recording which archives were unpacked there.
UNPACKED_RECORD = ".see_dml_unpacked.json"


class DownloadError(Exception):
    """A file cannot be had, or is not the right one: the message says which and why."""


@dataclass(frozen=True)
class Resource:
    """One file of a dataset.

    Attributes:
        key: what ``sha256.<key>=`` calls it.
        filename: its official name (the name it is kept under in ``download_dir``).
        urls: sources, tried in order; empty when there is none that works.
        hash: ``"md5:<hex>"`` / ``"sha256:<hex>"``; ``None`` when none is recorded.
        kind: ``"tgz"`` / ``"zip"`` (unpacked) or ``"file"`` (copied).
        dest: where under ``dataset.root`` it goes: the folder an archive unpacks into, or
            the file's path.
        strip: the archive's top folder, whose content is what ``dest`` holds.
    """

    key: str
    filename: str
    urls: tuple[str, ...]
    hash: str | None
    kind: str
    dest: str = "."
    strip: str | None = None


@dataclass(frozen=True)
class DatasetFiles:
    """A dataset's files, what is known of their sources, and the way to get them by hand."""

    name: str
    resources: tuple[Resource, ...]
    status: str
    manual: str


def load_sources(path: Path | None = None) -> dict[str, DatasetFiles]:
    """The table of :file:`sources.yaml` beside this module (which file, from where, with
    which hash, unpacked how; how to get it by hand) as :class:`DatasetFiles`."""
    import yaml

    raw = yaml.safe_load((path or Path(__file__).with_name("sources.yaml")).read_text())
    return {key: DatasetFiles(
        entry["name"],
        tuple(Resource(r["key"], r["filename"], tuple(r.get("urls") or ()), r.get("hash"),
                       r["kind"], r.get("dest", "."), r.get("strip")) for r in entry["files"]),
        entry["status"], entry["manual"].rstrip("\n"))
        for key, entry in raw.items()}


#: every dataset's files (``sources.yaml``)
SOURCES: dict[str, DatasetFiles] = load_sources()

#: which ``SOURCES`` entry a dataset class is.
_BY_CLASS = {"CUB200": "cub", "StanfordOnlineProducts": "sop", "Cars196": "cars",
             "InShop": "inshop"}


# --------------------------------------------------------------------------- hashes


def file_hash(path: Path, alg: str) -> str:
    import pooch

    return pooch.file_hash(str(path), alg=alg)


def split_hash(spec: str) -> tuple[str, str]:
    alg, _, value = spec.partition(":")
    return alg, value.lower()


def hash_mismatch(path: Path, spec: str) -> tuple[str, str] | None:
    """``(expected, actual)`` when ``path`` does not have hash ``spec``, else ``None``."""
    alg, expected = split_hash(spec)
    actual = file_hash(path, alg)
    return None if actual == expected else (f"{alg}:{expected}", f"{alg}:{actual}")


def move_aside(path: Path, actual: str) -> Path:
    aside = path.with_name(f"{path.name}.bad-{actual.split(':')[-1][:12]}")
    path.replace(aside)
    return aside


# --------------------------------------------------------------------------- fetching


def _downloader(url: str, progress: bool, timeout: float) -> Any:
    import pooch

    if url.startswith("ftp://"):
        return pooch.FTPDownloader(progressbar=progress, timeout=timeout)
    return pooch.HTTPDownloader(progressbar=progress, timeout=timeout)


def fetch(urls: Sequence[str], target: Path, retries: int, progress: bool,
          timeout: float) -> None:
    """Download ``target`` from the first of ``urls`` that delivers; the bytes go to
    ``<target>.part`` and take ``target``'s name only once the transfer has completed.

    A failed transfer is retried ``retries`` times, except where retrying cannot help (the
    server answered that the file is not there, or not for us: an HTTP 4xx other than 408
    and 429). The error names each source with one short reason (:func:`short_reason`)."""
    part = target.with_name(target.name + ".part")
    failures: list[str] = []
    for url in urls:
        tries = 0
        for _ in range(1 + max(0, retries)):
            part.unlink(missing_ok=True)
            print(f"fetching {target.name} from {url}", file=sys.stderr, flush=True)
            tries += 1
            try:
                _downloader(url, progress, timeout)(url, str(part), None)
            except Exception as err:  # any transfer failure: say which source, try the next
                part.unlink(missing_ok=True)
                reason = short_reason(err, timeout)
                if _final(err):
                    break
                continue
            part.replace(target)
            return
        failures.append(f"{url}: {reason}" + (f" ({tries} tries)" if tries > 1 else ""))
    raise DownloadError(f"{target.name}: could not be fetched ({'; '.join(failures)})")


def _status(err: BaseException) -> int | None:
    response = getattr(err, "response", None)
    status = getattr(response, "status_code", None)
    return int(status) if isinstance(status, int) else None


def _final(err: BaseException) -> bool:
    """Whether another try cannot help: an HTTP 4xx answer other than 408 (timeout) and
    429 (too many requests)."""
    status = _status(err)
    return status is not None and 400 <= status < 500 and status not in (408, 429)


def short_reason(err: BaseException, timeout: float) -> str:
    """Why a transfer failed, in a few words: ``HTTP 404 Not Found``, ``cannot connect
    (Connection refused)``, ``no answer within 30 s``. requests' own text repeats the URL
    and nests three exceptions (600 characters for a refused connection)."""
    import re

    import requests

    status = _status(err)
    if status is not None:
        reason = getattr(getattr(err, "response", None), "reason", "") or ""
        return f"HTTP {status} {reason}".strip()
    if isinstance(err, requests.exceptions.Timeout):
        return f"no answer within {timeout:g} s (timeout=...)"
    if isinstance(err, requests.exceptions.ChunkedEncodingError):
        return "the connection dropped during the transfer"
    text = str(err)
    if isinstance(err, requests.exceptions.ConnectionError):
        found = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", text)
        if found:
            return f"cannot connect ({found.group(1).strip()})"
        if "RemoteDisconnected" in text or "Connection aborted" in text:
            return "the connection dropped during the transfer"
        return "cannot connect"
    first = text.strip().splitlines()[0] if text.strip() else ""
    return f"{type(err).__name__}: {first}"[:200]


# --------------------------------------------------------------------------- unpacking


def _inside(base: Path, rel: PurePosixPath) -> Path:
    """``base / rel``, refusing absolute names and ``..`` (an archive may not write outside)."""
    if rel.is_absolute() or ".." in rel.parts:
        raise DownloadError(f"archive member {str(rel)!r} points outside the dataset folder")
    return base.joinpath(*rel.parts)


def _members(path: Path, kind: str) -> Iterator[tuple[str, bool, Any]]:
    """``(name, is_dir, opener)`` of every regular file and folder of an archive."""
    if kind == "tgz":
        with tarfile.open(path, "r:*") as tar:
            for m in tar:
                if m.isdir() or m.isfile():
                    yield m.name, m.isdir(), (lambda m=m: tar.extractfile(m))
    else:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                yield info.filename, info.is_dir(), (lambda info=info: zf.open(info))


def unpack(path: Path, res: Resource, root: Path) -> int:
    """Unpack (or copy) ``path`` into ``root`` as ``res`` says; returns the number of files."""
    if res.kind == "file":
        target = _inside(root, PurePosixPath(res.dest))
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        return 1
    base = _inside(root, PurePosixPath(res.dest))
    n = 0
    try:
        for name, is_dir, opener in _members(path, res.kind):
            rel = PurePosixPath(name)  # "./a/b" -> a/b
            if res.strip and rel.parts[:1] == (res.strip,):
                rel = PurePosixPath(*rel.parts[1:]) if len(rel.parts) > 1 else PurePosixPath(".")
            target = _inside(base, rel)
            if is_dir:
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            src: IO[bytes] = opener()
            with src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            n += 1
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as err:
        raise DownloadError(f"{path}: cannot be unpacked ({type(err).__name__}: {err})") from err
    return n


# --------------------------------------------------------------------------- the run


def _sha256_spec(value: Any, key: str) -> str:
    text = str(value).strip().lower()
    if len(text) != 64 or any(c not in "0123456789abcdef" for c in text):
        raise DownloadError(f"sha256 for '{key}': {value!r} is not a SHA-256 (64 hex digits)")
    return f"sha256:{text}"


def _hash_overrides(cfg_hash: Any, resources: Sequence[Resource],
                    archives: dict[str, Path]) -> dict[str, str]:
    """``sha256=`` as ``{key: "sha256:<hex>"}``. A plain ``sha256=<hex>`` is for the
    dataset's one file, or for the one file given by ``archive=``."""
    if cfg_hash is None or (isinstance(cfg_hash, DictConfig | dict) and not cfg_hash):
        return {}
    if not isinstance(cfg_hash, DictConfig | dict):
        keys = ([r.key for r in resources] if len(resources) == 1
                else list(archives) if len(archives) == 1 else [])
        if not keys:
            raise DownloadError(f"sha256=<hex> is ambiguous: this dataset has {len(resources)} "
                                "files; give +sha256.<key>=<hex> for keys "
                                + ", ".join(r.key for r in resources))
        return {keys[0]: _sha256_spec(cfg_hash, keys[0])}
    known = {r.key for r in resources}
    unknown = sorted(set(cfg_hash) - known)
    if unknown:
        raise DownloadError(f"sha256 keys {unknown} are not files of this dataset "
                            f"(its keys: {sorted(known)})")
    return {str(k): _sha256_spec(v, str(k)) for k, v in cfg_hash.items()}


def _archives(cfg_archive: Any, resources: Sequence[Resource]) -> dict[str, Path]:
    """``archive=`` as ``{key: path}``, each file matched to its resource by name."""
    if cfg_archive is None:
        return {}
    paths = [Path(str(p)).expanduser() for p in
             (cfg_archive if isinstance(cfg_archive, ListConfig | list) else [cfg_archive])]
    out: dict[str, Path] = {}
    for p in paths:
        if not p.is_file():
            raise DownloadError(f"archive={p}: no such file")
        matches = [r for r in resources if r.filename == p.name]
        if not matches and len(resources) == 1:
            matches = list(resources)
        if not matches:
            names = ", ".join(r.filename for r in resources)
            raise DownloadError(f"archive={p}: not one of this dataset's files ({names})")
        out[matches[0].key] = p.resolve()
    return out


def _recorded_hash(path: Path) -> str | None:
    side = path.with_name(path.name + ".sha256")
    if side.is_file():
        value = side.read_text().split()
        return f"sha256:{value[0]}" if value else None
    return None


def obtain(res: Resource, download_dir: Path, cfg: DictConfig, given: Path | None,
           hash_spec: str | None, base_url: str | None) -> tuple[Path, bool]:
    """The verified local file of ``res``: ``(path, verified)``. Fetches it when needed."""
    if given is not None:
        if hash_spec is not None:
            bad = hash_mismatch(given, hash_spec)
            if bad:
                raise DownloadError(f"{given}: hash mismatch: expected {bad[0]}, got {bad[1]} "
                                    "(not used)")
        return given, hash_spec is not None
    target = download_dir / res.filename
    if target.is_file() and hash_spec is not None:
        bad = hash_mismatch(target, hash_spec)
        if bad is None:
            print(f"{res.filename}: already in {download_dir}, hash verified: not fetched",
                  file=sys.stderr)
            return target, True
        aside = move_aside(target, bad[1])
        print(f"{res.filename}: the copy in {download_dir} has hash {bad[1]}, not {bad[0]}: "
              f"moved aside to {aside.name}, fetching it again", file=sys.stderr)
    elif target.is_file():
        print(f"{res.filename}: already in {download_dir} (no hash to verify it by): not "
              "fetched", file=sys.stderr)
        return target, False
    urls = [f"{base_url.rstrip('/')}/{res.filename}"] if base_url else list(res.urls)
    if not urls:
        raise DownloadError(f"{res.filename}: no source to fetch it from")
    made = [d for d in (download_dir, *download_dir.parents) if not d.exists()]
    download_dir.mkdir(parents=True, exist_ok=True)
    try:
        fetch(urls, target, int(cfg.retries), bool(cfg.progress), float(cfg.timeout))
    except DownloadError:
        for folder in made:  # deepest first: no empty downloads/ left behind
            try:
                folder.rmdir()
            except OSError:
                break
        raise
    if hash_spec is None:
        return target, False
    bad = hash_mismatch(target, hash_spec)
    if bad:
        aside = move_aside(target, bad[1])
        raise DownloadError(f"{res.filename}: hash mismatch: expected {bad[0]}, got {bad[1]}; "
                            f"moved aside to {aside} (not used)")
    return target, True


def dataset_key(source: DatasetSource) -> str:
    for cls in type(source).__mro__:
        if cls.__name__ in _BY_CLASS:
            return _BY_CLASS[cls.__name__]
    raise DownloadError(f"{type(source).__name__}: nothing to download for this dataset "
                        f"(downloadable: {', '.join(SOURCES)})")


def download(cfg: DictConfig, source: DatasetSource) -> int:
    """The whole run; returns the exit status: 0 usable,
    :data:`~see_dml.runtime.errors.USER_ERROR_STATUS` unpacked but unusable."""
    key = dataset_key(source)
    files = SOURCES[key]
    if source.root is None:
        raise source.root_not_set()
    root = Path(source.root).expanduser().absolute()
    download_dir = (Path(str(cfg.download_dir)).expanduser() if cfg.download_dir
                    else root.parent / "downloads")
    archives = _archives(cfg.archive, files.resources)
    overrides = _hash_overrides(cfg.sha256, files.resources, archives)
    base_url = str(cfg.base_url) if cfg.base_url else None
    print(f"{files.name}: {files.status}", file=sys.stderr)
    record_path = root / UNPACKED_RECORD
    record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    local: list[tuple[Resource, Path, bool]] = []
    for res in files.resources:
        given = archives.get(res.key)
        target = download_dir / res.filename
        spec = overrides.get(res.key) or res.hash or _recorded_hash(given or target)
        if res.key in overrides and res.hash and overrides[res.key] != res.hash:
            print(f"{res.filename}: verifying against the given sha256, not the recorded "
                  f"{res.hash}", file=sys.stderr)
        try:
            path, verified = obtain(res, download_dir, cfg, given, spec, base_url)
        except DownloadError as err:
            if "no source" in str(err):
                raise DownloadError(f"{err}\n{files.manual}") from err
            if "could not be fetched" in str(err):  # the way by hand, then the error line
                print(files.manual, file=sys.stderr)
            raise
        if not verified:
            print(f"{res.filename}: NOT verified (no hash known; pass +sha256.{res.key}=<hex> "
                  "to verify it)", file=sys.stderr)
        local.append((res, path, verified))
    for res, path, verified in local:
        digest = file_hash(path, "sha256")
        if record.get(res.filename) == digest:
            print(f"{res.filename}: already unpacked in {root}", file=sys.stderr)
            continue
        try:
            n = unpack(path, res, root)
        except DownloadError as err:
            if verified or path.parent != download_dir:
                raise
            # Unverified and not an archive (an HTML page from a file host, say): not kept
            # where the next run would take it for the file.
            aside = move_aside(path, digest)
            raise DownloadError(f"{err}; moved aside to {aside}") from err
        record[res.filename] = digest
        record_path.parent.mkdir(parents=True, exist_ok=True)
        record_path.write_text(json.dumps(record, indent=1) + "\n")
        print(f"{res.filename}: {n} file(s) into {root / res.dest}", file=sys.stderr)
    report = check_source(source, bool(cfg.check.verify_images), int(cfg.check.workers),
                          progress=bool(cfg.progress))
    print(format_report(report, source))
    print(json.dumps(report.counts()), flush=True)
    if not report.ok:
        print("error: unpacked, but the dataset is not usable:\n"
              + "\n".join(f"  - {p}" for p in report.problems), file=sys.stderr)
        return USER_ERROR_STATUS
    for res, path, verified in local:
        if not verified and res.hash is None and res.key not in overrides:
            digest = file_hash(path, "sha256")
            if path.parent == download_dir:
                path.with_name(path.name + ".sha256").write_text(f"{digest}  {path.name}\n")
            print(f"{res.filename}: sha256 {digest} (recorded: it passed data.check; "
                  f"+sha256.{res.key}={digest} verifies this copy elsewhere)", file=sys.stderr)
    if not cfg.keep_archives:
        for _, path, _ in local:
            if path.parent == download_dir:
                path.unlink(missing_ok=True)
    return 0


def _translate_flags(argv: list[str]) -> list[str]:
    """``--archive X`` / ``--archive=X`` / ``--sha256 X`` as the ``key=value`` Hydra reads;
    several ``--archive`` make a list."""
    out, archives = [], []
    i = 0
    while i < len(argv):
        arg = argv[i]
        name, eq, value = arg.partition("=")
        if name in ("--archive", "--sha256"):
            if not eq:
                if i + 1 >= len(argv):
                    raise SystemExit(f"error: {name} needs a value")
                value = argv[i + 1]
                i += 1
            if name == "--archive":
                archives.append(value)
            else:
                out.append(f"sha256={value}")
        else:
            out.append(arg)
        i += 1
    if len(archives) == 1:
        out.append(f"archive={_quote(archives[0])}")
    elif archives:
        out.append("archive=[" + ",".join(_quote(a) for a in archives) + "]")
    return out


def _quote(value: str) -> str:
    """A path as a Hydra override value (quoted when it holds characters Hydra parses)."""
    if any(c in value for c in " ,[]{}()='\"\\:"):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return value


@hydra_main("download")
def _main(cfg: DictConfig) -> None:
    from hydra.errors import InstantiationException

    from see_dml.runtime.cli import quiet_third_party
    from see_dml.runtime.errors import DatasetNotFoundError

    quiet_third_party()
    try:
        source = hydra.utils.instantiate(cfg.dataset)
    except InstantiationException as err:
        exit_with_error(f"cannot build the dataset from the 'dataset' config: {err}")
    try:
        status = download(cfg, source)
    except (DownloadError, DatasetNotFoundError, ValueError) as err:
        exit_with_error(str(err))
    if status:
        sys.exit(status)


def usage() -> str:
    """``--help`` without a dataset: how to call the tool and the datasets it fetches (Hydra's
    own help needs the mandatory ``dataset`` to compose the config it prints)."""
    choices = sorted(p.stem for p in (CONFIG_DIR / "dataset").glob("*.yaml")
                     if p.stem in SOURCES)
    head = (__doc__ or "").split("\n\n")
    return "\n\n".join([
        "see-dml-download (python -m see_dml.data.download): " + head[0],
        head[1].rstrip(),
        f"dataset: one of {', '.join(choices)} (required).",
        "Options (key=value; `--help dataset=NAME` prints the whole config): archive, sha256, "
        "base_url, download_dir, keep_archives, retries, timeout, progress, check.*.",
        "Sources, hashes and the manual routes: docs/datasets-download.md.",
    ])


def main() -> None:
    argv = sys.argv[1:]
    if ({"--help", "-h"} & set(argv)) and not any(a.startswith("dataset=") for a in argv):
        print(usage())
        return
    sys.argv[1:] = _translate_flags(argv)
    _main()


if __name__ == "__main__":
    main()
