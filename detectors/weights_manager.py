"""Installing upstream weights: resumable checked downloads, safe archive extraction, conversion to safetensors.

`python -m workbench weights list | install NAME [--source S] | add NAME PATH | verify`.

Flow of `install`: for each `[[upstream]]` row of the chosen source, download the file (a `.part`
file resumed with an HTTP Range request, a progress bar on stderr, size and sha256 checks; a row
without an exact `size` must give a `max_bytes` ceiling, and a download past it is stopped and deleted), record
its sha256 in `weights/installed.toml` (trust = "manifest" when the manifest has the sha256, else
"first-use": upstream publishes no checksum, so the first download's hash is recorded and every
later download or check must match it), check a tar archive member by member before reading
anything from it (regular files only, no absolute paths, no `..`, bounded count and size), copy
out only the members named in `converts`, and convert each raw checkpoint to a read-only
safetensors file with the detector's `convert_checkpoint(raw_path)` (or the generic converter
here). Pickles are only ever read through `load_torch_checkpoint` (torch.load weights_only=True).
"""
from __future__ import annotations

import json
import os
import shutil
import stat
import sys
import tarfile
import tomllib
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timezone
from http.client import HTTPException
from pathlib import Path, PurePosixPath
from typing import Callable, TextIO

import torch

from detectors.weights import sha256_file, weights_dir, WeightsError
from detectors.registry import UnknownDetector, detector_class
from detectors.weights import generic_convert, manifest_path, read_installed, read_manifest

MAX_ARCHIVE_BYTES = 8 * 1024**3  # total uncompressed size of the regular files in one archive
MAX_ARCHIVE_MEMBERS = 10_000
ALLOWED_SCHEMES = ("http", "https")
INSTALLED_NAME = "installed.toml"
TOFU = "trust on first use: upstream publishes no checksum"

Converter = Callable[[Path], "dict[str, torch.Tensor]"]


# -- the manifest's upstream rows -------------------------------------------------------------
@dataclass(frozen=True)
class Upstream:
    """One `[[upstream]]` row: a file to download and what to convert from it."""

    detector: str
    name: str
    url: str
    size: int | None
    sha256: str | None
    max_bytes: int | None  # a ceiling for a download whose exact size is unknown
    licence: str
    source: str
    format: str  # "tar.gz" (also "tar") or "pickle"
    converts: tuple[tuple[str, str], ...]  # (raw file, converted file relative to the weights folder)
    # raw files a tar archive may lack (`optional = true` on a converts entry): skipped and said, not an
    # error (e.g. a member upstream's own code never opened, so its archive may not carry it)
    optional: frozenset[str] = frozenset()

    @property
    def filename(self) -> str:
        name = urllib.parse.unquote(PurePosixPath(urllib.parse.urlsplit(self.url).path).name)
        if not name or name in (".", "..") or "/" in name or "\\" in name:
            raise WeightsError(f"{self.detector}: the upstream url {self.url!r} names no file")
        return name

    @property
    def download_rel(self) -> str:
        return str(PurePosixPath("raw", self.detector, self.name, self.filename))


def read_upstreams(path: Path) -> list[Upstream]:
    if not path.is_file():
        raise WeightsError(f"no weights manifest at {path}")
    data = tomllib.loads(path.read_text())
    rows = []
    for row in data.get("upstream", []):
        fmt = row.get("format", "")
        if fmt not in ("tar.gz", "tar", "pickle"):
            raise WeightsError(f"{path}: upstream {row.get('name')!r} of {row.get('detector')!r} has unknown format {fmt!r}")
        size, max_bytes = row.get("size"), row.get("max_bytes")
        if size is None and max_bytes is None:
            raise WeightsError(f"{path}: upstream {row.get('name')!r} of {row.get('detector')!r} gives neither `size` nor "
                               "`max_bytes`; every download needs a bound")
        for key, value in (("size", size), ("max_bytes", max_bytes)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
                raise WeightsError(f"{path}: upstream {row.get('name')!r} of {row.get('detector')!r}: {key} must be a "
                                   f"positive whole number of bytes, got {value!r}")
        for c in row.get("converts", []):
            if not isinstance(c.get("optional", False), bool):
                raise WeightsError(f"{path}: upstream {row.get('name')!r} of {row.get('detector')!r}: `optional` of "
                                   f"{c.get('raw')!r} must be true or false, got {c['optional']!r}")
        rows.append(Upstream(
            detector=row["detector"], name=row["name"], url=row["url"], size=size, max_bytes=max_bytes,
            sha256=(row.get("sha256") or "").lower() or None, licence=row.get("licence", ""), source=row.get("source", ""),
            format=fmt, converts=tuple((c["raw"], c["to"]) for c in row.get("converts", [])),
            optional=frozenset(c["raw"] for c in row.get("converts", []) if c.get("optional") is True),
        ))
    return rows


# -- paths ---------------------------------------------------------------------------------------
def safe_relative(name: str, what: str = "path") -> PurePosixPath:
    """A relative POSIX path with no `..`, no absolute root, no drive, no backslash, no NUL."""
    if not name or "\x00" in name or "\\" in name:
        raise WeightsError(f"{what} {name!r} is not a plain relative path")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise WeightsError(f"{what} {name!r} is an absolute path")
    p = PurePosixPath(name)
    if ".." in p.parts:
        raise WeightsError(f"{what} {name!r} climbs out of its folder with '..'")
    if not p.parts:
        raise WeightsError(f"{what} {name!r} is empty")
    return p


def _inside(base: Path, rel: PurePosixPath) -> Path:
    out = base / rel
    if not out.resolve().is_relative_to(base.resolve()):
        raise WeightsError(f"{rel} would be written outside {base}")
    return out


def _remove(path: Path) -> None:
    if path.exists() or path.is_symlink():
        try:
            os.chmod(path, 0o644)
        except OSError:
            pass
        path.unlink()


# -- downloads -----------------------------------------------------------------------------------
def check_url(url: str) -> None:
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme not in ALLOWED_SCHEMES:
        raise WeightsError(f"refusing to download from {url!r}: only http and https URLs are allowed")


class _CheckedRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        check_url(newurl)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


_OPENER = urllib.request.build_opener(_CheckedRedirect())


def finish_part(part: Path, dest: Path, size: int | None, sha256: str | None) -> tuple[str, int]:
    """Check a complete `.part` file's size and sha256, then move it to `dest`, read-only.

    A file that is too big or whose hash differs is deleted (resuming cannot mend it).
    """
    got = part.stat().st_size
    if size is not None and got != size:
        if got > size:
            part.unlink()
        raise WeightsError(f"{dest.name}: {got} bytes, the manifest says {size}; refusing"
                           + (" (the partial file is kept; run the command again to resume)" if got < size else ""))
    digest = sha256_file(part)
    if sha256 and digest != sha256:
        part.unlink()
        raise WeightsError(f"{dest.name}: sha256 {digest} does not match the manifest's {sha256}; "
                           "the file was deleted, refusing to install it")
    _remove(dest)
    os.replace(part, dest)
    os.chmod(dest, 0o444)
    return digest, got


class NoNetwork(WeightsError):
    """The download could not reach its server at all (no network, DNS, refused): not a bad file."""


def download(url: str, dest: Path, *, size: int | None = None, sha256: str | None = None, progress: bool = True,
             timeout: float = 60.0, chunk: int = 1 << 20, max_bytes: int | None = None) -> tuple[str, int]:
    """Download `url` to `dest` through `dest.part`, resuming a partial file; returns (sha256, size).

    Args:
        size: the exact size, when known; more bytes than this are refused.
        max_bytes: the ceiling when the exact size is unknown; one of the two is required.

    Raises:
        WeightsError: a non-http(s) URL, neither size nor max_bytes, an HTTP error, a size the
            server or the file gets wrong, more than max_bytes (the partial file is deleted), a
            sha256 mismatch, or a download cut short (then the `.part` file is kept for resuming).
    """
    check_url(url)
    if size is None and max_bytes is None:
        raise WeightsError(f"download of {url}: no size and no max_bytes given; refusing an unbounded download")
    limit = size if size is not None else max_bytes
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.is_file() else 0
    if have > limit:
        part.unlink()
        have = 0
    if size is None or have < size:
        _fetch(url, part, have, size, progress, timeout, chunk, limit)
    return finish_part(part, dest, size, sha256)


def _fetch(url: str, part: Path, have: int, size: int | None, progress: bool, timeout: float, chunk: int,
           limit: int) -> None:
    from tqdm import tqdm

    name = part.name.removesuffix(".part")
    resume = f"the partial file {part} is kept; run the same command again to resume"
    req = urllib.request.Request(url, headers={"User-Agent": "deepfake-workbench", "Accept-Encoding": "identity"})
    if have:
        req.add_header("Range", f"bytes={have}-")
    try:
        resp = _OPENER.open(req, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # nothing left past what we have: the .part is complete
            return
        raise WeightsError(f"download of {url} failed: HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, OSError, HTTPException) as exc:
        reason = getattr(exc, "reason", exc)
        raise NoNetwork(f"download of {url} failed: {reason}" + (f"; {resume}" if have else "")) from exc
    with resp:
        length_header = resp.headers.get("Content-Length")
        length = int(length_header) if length_header and length_header.strip().isdigit() else None
        if have and resp.status == 206:
            content_range = resp.headers.get("Content-Range", "")
            try:
                start = int(content_range.split()[1].split("-")[0])
            except (IndexError, ValueError):
                start = -1
            if start != have:
                part.unlink()
                raise WeightsError(f"download of {url}: the server resumed at {content_range!r}, not at byte {have}; "
                                   "the partial file was deleted, run the command again")
            mode = "ab"
        else:  # 200: a fresh start (the server ignored or did not get a Range request)
            start, mode = 0, "wb"
        expected = start + length if length is not None else None
        if size is not None and expected is not None and expected != size:
            raise WeightsError(f"download of {url}: the server reports {expected} bytes, the manifest says {size}; refusing")
        if expected is not None and expected > limit:
            raise WeightsError(f"download of {url}: the server reports {expected} bytes, above the manifest's ceiling "
                               f"of {limit}; refusing")
        received = start
        too_big = over_limit = False
        bar = tqdm(total=expected or size, initial=start, desc=name[:40], unit="B", unit_scale=True,
                   unit_divisor=1024, file=sys.stderr, disable=not progress, leave=False)
        try:
            with open(part, mode) as fh:
                while block := resp.read(chunk):
                    fh.write(block)
                    received += len(block)
                    bar.update(len(block))
                    if (size is not None and received > size) or (expected is not None and received > expected):
                        too_big = True
                        break
                    if received > limit:
                        over_limit = True
                        break
        except (OSError, HTTPException) as exc:
            raise WeightsError(f"download of {name} broke off at byte {received} ({exc}); {resume}") from exc
        finally:
            bar.close()
        if too_big:
            part.unlink()
            raise WeightsError(f"download of {url}: the server sent more bytes than announced; the file was deleted, refusing")
        if over_limit:
            part.unlink()
            raise WeightsError(f"download of {url}: more than the manifest's ceiling of {limit} bytes; stopped, the "
                               "partial file was deleted, refusing")
        if expected is not None and received < expected:
            raise WeightsError(f"download of {name} stopped at {received} of {expected} bytes "
                               f"(the server closed the connection); {resume}")


# -- archives --------------------------------------------------------------------------------------
def _kind(m: tarfile.TarInfo) -> str:
    if m.issym():
        return "symbolic link"
    if m.islnk():
        return "hard link"
    if m.ischr() or m.isblk():
        return "device"
    if m.isfifo():
        return "fifo"
    if m.issparse():
        return "sparse file"
    return f"member of type {m.type!r}"


def extract_members(archive: Path, wanted: list[str], dest: Path, *, max_bytes: int = MAX_ARCHIVE_BYTES,
                    max_members: int = MAX_ARCHIVE_MEMBERS, optional: frozenset[str] | set[str] = frozenset()
                    ) -> dict[str, Path]:
    """Check every member of a tar archive, then copy out only `wanted` into `dest`.

    The whole archive is refused (nothing written) if any member is a link, device or other
    non-regular file, has an absolute path or `..`, or if the member count or the total size of
    the regular files exceeds the bounds. A wanted name in `optional` that the archive lacks is
    left out of the result; any other missing name refuses the archive. Returns {wanted name: extracted path}.
    """
    label = archive.name
    try:
        tf = tarfile.open(archive, "r:*")
    except (tarfile.TarError, OSError) as exc:
        raise WeightsError(f"{label}: not a readable tar archive ({exc})") from exc
    with tf:
        members: dict[str, tarfile.TarInfo] = {}
        total = 0
        try:
            for count, m in enumerate(tf, 1):
                if count > max_members:
                    raise WeightsError(f"{label}: more than {max_members} members; archive refused")
                rel = safe_relative(m.name, f"{label}: member")
                if m.isdir():
                    continue
                if not m.isreg() or m.issparse():
                    raise WeightsError(f"{label}: member {m.name!r} is a {_kind(m)}; only regular files are accepted, archive refused")
                total += m.size
                if total > max_bytes:
                    raise WeightsError(f"{label}: more than {max_bytes} bytes uncompressed; archive refused")
                if str(rel) in members:
                    raise WeightsError(f"{label}: member {m.name!r} appears twice; archive refused")
                members[str(rel)] = m
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise WeightsError(f"{label}: damaged tar archive ({exc})") from exc
        absent = [w for w in wanted if str(safe_relative(w, "raw file")) not in members]
        missing = [w for w in absent if w not in optional]
        if missing:
            shown = ", ".join(sorted(members)[:10]) or "no files"
            raise WeightsError(f"{label}: expected member(s) {', '.join(missing)} not found (the archive has: {shown})")
        out: dict[str, Path] = {}
        dest.mkdir(parents=True, exist_ok=True)
        for w in wanted:
            if w in absent:
                continue
            rel = safe_relative(w, "raw file")
            m = members[str(rel)]
            target = _inside(dest, rel)
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(target.name + ".tmp")
            src = tf.extractfile(m)
            if src is None:
                raise WeightsError(f"{label}: member {m.name!r} cannot be read")
            written = 0
            with src, open(tmp, "wb") as fh:
                while written < m.size and (block := src.read(min(1 << 20, m.size - written))):
                    fh.write(block)
                    written += len(block)
            if written != m.size:
                tmp.unlink()
                raise WeightsError(f"{label}: member {m.name!r} is truncated ({written} of {m.size} bytes)")
            _remove(target)
            os.replace(tmp, target)
            out[w] = target
        return out


# -- conversion -------------------------------------------------------------------------------------
def find_converter(detector: str) -> Converter:
    """The converter the detector names (its class's `convert_checkpoint`); the generic converter
    for a name no registered detector has, or a detector that names none."""
    try:
        cls = detector_class(detector)
    except UnknownDetector:
        return generic_convert
    fn = getattr(cls, "convert_checkpoint", None)
    return fn if callable(fn) else generic_convert


def _now() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


# -- the manager ------------------------------------------------------------------------------------
class WeightsManager:
    """Install, add, list and verify weights under one weights folder, from one manifest."""

    def __init__(self, root: Path | None = None, manifest: Path | None = None, *, progress: bool = True,
                 max_archive_bytes: int = MAX_ARCHIVE_BYTES, max_archive_members: int = MAX_ARCHIVE_MEMBERS,
                 converter_for: Callable[[str], Converter] | None = None, out: TextIO | None = None,
                 timeout: float = 60.0) -> None:
        self.root = Path(root or weights_dir())
        self.manifest = Path(manifest or manifest_path())
        self.progress = progress
        self.max_archive_bytes = max_archive_bytes
        self.max_archive_members = max_archive_members
        self.converter_for = converter_for or find_converter
        self.out = out or sys.stderr
        self.timeout = timeout

    @property
    def installed_path(self) -> Path:
        return self.root / INSTALLED_NAME

    def say(self, msg: str) -> None:
        print(msg, file=self.out)

    # records
    def records(self) -> dict[str, dict]:
        return read_installed(self.installed_path)

    def _record(self, rel: str, **row) -> None:
        records = self.records()
        records[rel] = {"file": rel, **{k: v for k, v in row.items() if v is not None}}
        lines = ["# Installed weights: written by `python -m workbench weights`; do not edit by hand.",
                 "# trust = \"manifest\": sha256 checked against weights/manifest.toml;",
                 "# trust = \"first-use\": upstream publishes no checksum, so this sha256 was recorded at first install.", ""]
        for key in sorted(records):
            lines.append("[[files]]")
            for k, v in records[key].items():
                lines.append(f"{k} = {json.dumps(v)}")
            lines.append("")
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.installed_path.with_name(INSTALLED_NAME + ".tmp")
        tmp.write_text("\n".join(lines))
        os.replace(tmp, self.installed_path)

    def _manifest_sha(self) -> dict[str, str]:
        """file (relative to the weights folder) -> sha256, for every file the manifest pins."""
        pinned = {e.file: e.sha256.lower() for e in read_manifest(self.manifest) if e.sha256}
        pinned.update({u.download_rel: u.sha256 for u in read_upstreams(self.manifest) if u.sha256})
        return pinned

    # choosing upstream rows
    def sources(self, detector: str) -> list[Upstream]:
        rows = [u for u in read_upstreams(self.manifest) if u.detector == detector]
        if not rows:
            known = sorted({u.detector for u in read_upstreams(self.manifest)})
            raise WeightsError(f"no upstream source for {detector!r} in {self.manifest}; known: {', '.join(known) or 'none'}")
        return rows

    def _pick(self, detector: str, source: str | None) -> list[Upstream]:
        rows = self.sources(detector)
        name = source or rows[0].name
        chosen = [u for u in rows if u.name == name]
        if not chosen:
            names = ", ".join(dict.fromkeys(u.name for u in rows))
            raise WeightsError(f"{detector}: no source named {name!r}; sources: {names}")
        return chosen

    # install / add
    def install(self, detector: str, source: str | None = None) -> list[str]:
        """Download, check and convert every file of one source; returns the converted files."""
        done = []
        for row in self._pick(detector, source):
            done += self._install_row(row)
        return done

    def add(self, detector: str, path: Path, source: str | None = None) -> list[str]:
        """Install from a file the user already has (the source's tar archive or one of its pickles)."""
        path = Path(path)
        if not path.is_file():
            raise WeightsError(f"no such file: {path}")
        rows = self._pick(detector, source) if source else self.sources(detector)
        is_tar = tarfile.is_tarfile(path)
        fitting = [u for u in rows if (u.format != "pickle") == is_tar]
        if not is_tar:
            fitting = [u for u in fitting if path.name == u.filename or any(path.name == r for r, _ in u.converts)] or \
                      (fitting if len(fitting) == 1 else [])
        if not fitting:
            kind = "a tar archive" if is_tar else "a single checkpoint"
            raise WeightsError(f"{path.name} is {kind}, which matches no upstream file of {detector!r}; "
                               f"name the source with --source or rename the file to the upstream name")
        return self._install_row(fitting[0], local=path)

    def _install_row(self, row: Upstream, local: Path | None = None) -> list[str]:
        rel = row.download_rel
        dest = _inside(self.root, safe_relative(rel))
        prior = self.records().get(rel)
        if local is not None:
            st = local.stat()
            if not stat.S_ISREG(st.st_mode):
                raise WeightsError(f"{local} is not a regular file; refusing")
            if st.st_size > (row.size or row.max_bytes):
                raise WeightsError(f"{local} is {st.st_size} bytes, above the manifest's "
                                   f"{'size' if row.size else 'ceiling'} of {row.size or row.max_bytes}; refusing")
            dest.parent.mkdir(parents=True, exist_ok=True)
            part = dest.with_name(dest.name + ".part")
            shutil.copyfile(local, part)
            digest, size = finish_part(part, dest, row.size, row.sha256)
            self.say(f"{row.detector}: copied {local} ({size} bytes)")
        elif dest.is_file() and prior:
            digest, size = sha256_file(dest), dest.stat().st_size
            self.say(f"{row.detector}: {row.filename} already downloaded")
            if row.sha256 and digest != row.sha256:
                raise WeightsError(f"{rel}: sha256 {digest} does not match the manifest's {row.sha256}; the file was "
                                   "changed or corrupted, refusing (delete it and install again)")
        else:
            _remove(dest)
            self.say(f"{row.detector}: downloading {row.url}")
            try:
                digest, size = download(row.url, dest, size=row.size, max_bytes=row.max_bytes, sha256=row.sha256,
                                        progress=self.progress, timeout=self.timeout)
            except NoNetwork as exc:
                raise NoNetwork(f"{exc}. No network here? Download {row.url} on a machine that has one, copy the "
                                f"file over, and run `python -m workbench weights add {row.detector} FILE`") from exc
        if prior and prior.get("sha256") and prior["sha256"] != digest and not row.sha256:
            _remove(dest)
            raise WeightsError(
                f"{rel}: sha256 {digest} differs from {prior['sha256']}, recorded at first install ({TOFU}); "
                f"the upstream file changed or was tampered with, refusing (deleted). If you trust the new file, "
                f"remove its entry from {self.installed_path} and install again")
        trust = "manifest" if row.sha256 else "first-use"
        if trust == "first-use" and not (prior and prior.get("sha256") == digest):
            self.say(f"{row.detector}: {TOFU}; recorded sha256 {digest} for {row.filename} in {self.installed_path}")
        self._record(rel, sha256=digest, size=size, installed_at=_now(), trust=trust, kind="download",
                     detector=row.detector, source=row.name, url=row.url)
        if row.format == "pickle":
            for raw, _ in row.converts:
                if raw != row.filename:
                    raise WeightsError(f"{row.detector}: the manifest converts {raw!r}, but {row.url} downloads {row.filename!r}")
            raws = {row.filename: dest}
            extracted: list[Path] = []
        else:
            base = self.root / "raw" / row.detector / row.name / "extracted"
            raws = extract_members(dest, [r for r, _ in row.converts], base, max_bytes=self.max_archive_bytes,
                                   max_members=self.max_archive_members, optional=row.optional)
            extracted = list(raws.values())
        done = []
        try:
            for raw, to in row.converts:
                if raw not in raws:
                    self.say(f"{row.detector}: optional member {raw} is not in {row.filename}; skipped "
                             f"(the detector names it unavailable)")
                    continue
                done.append(self._convert(row, raw, raws[raw], to, digest))
        finally:
            for p in extracted:  # the archive is kept (and recorded); its copies are not needed
                _remove(p)
        return done

    def _convert(self, row: Upstream, raw: str, raw_path: Path, to: str, source_sha: str) -> str:
        rel = str(safe_relative(to, "converted file"))
        target = _inside(self.root, PurePosixPath(rel))
        try:
            state = self.converter_for(row.detector)(raw_path)
        except WeightsError:
            raise
        except Exception as exc:
            raise WeightsError(f"{raw}: conversion failed: {type(exc).__name__}: {exc}") from exc
        if not isinstance(state, dict) or not state or not all(
                isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
            raise WeightsError(f"{raw}: the converter did not return a non-empty dict of tensors")
        from safetensors.torch import save_file

        tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".tmp")
        save_file(tensors, str(tmp), metadata={"converted_from": raw, "upstream_url": row.url,
                                               "upstream_sha256": source_sha, "detector": row.detector})
        os.chmod(tmp, 0o444)
        _remove(target)
        os.replace(tmp, target)
        digest, size = sha256_file(target), target.stat().st_size
        pinned = self._manifest_sha().get(rel)
        if pinned and digest != pinned:
            _remove(target)
            raise WeightsError(f"{rel}: the converted file's sha256 {digest} does not match the manifest's {pinned}; "
                               "deleted, refusing")
        trust = "manifest" if pinned else "first-use"
        self._record(rel, sha256=digest, size=size, installed_at=_now(), trust=trust, kind="converted",
                     detector=row.detector, source=row.name, converted_from=raw)
        self.say(f"{row.detector}: wrote {rel} ({size} bytes, read-only, sha256 {digest[:16]}…, trust {trust})")
        return rel

    # verify / list
    def verify(self) -> tuple[list[str], list[str]]:
        """Re-hash every recorded file and every manifest-pinned file present; returns (ok, problems)."""
        ok, problems = [], []
        pinned = self._manifest_sha()
        records = self.records()
        for rel in sorted(set(records) | {p for p in pinned if (self.root / p).is_file()}):
            path = self.root / rel
            expected = pinned.get(rel) or records.get(rel, {}).get("sha256")
            origin = "the manifest" if rel in pinned else f"{INSTALLED_NAME} ({records[rel].get('trust', '?')})"
            if not path.is_file():
                problems.append(f"{rel}: recorded as installed but missing")
                continue
            digest = sha256_file(path)
            if digest != expected:
                problems.append(f"{rel}: sha256 {digest[:16]}… does not match {origin}'s {str(expected)[:16]}…; "
                                "the file was changed or corrupted, it will be refused")
            else:
                ok.append(f"{rel}: ok ({origin})")
        return ok, problems

    def listing(self) -> list[dict]:
        records = self.records()
        entries = read_manifest(self.manifest)
        ups = read_upstreams(self.manifest)
        detectors = list(dict.fromkeys([e.detector for e in entries] + [u.detector for u in ups]))
        rows = []
        for det in detectors:
            files = []
            for e in (e for e in entries if e.detector == det):
                path = self.root / e.file
                rec = records.get(e.file, {})
                trust = "manifest" if e.sha256 else rec.get("trust", "unverified" if path.is_file() else "-")
                files.append({"file": e.file, "installed": path.is_file(), "trust": trust,
                              "size": path.stat().st_size if path.is_file() else e.size})
            sources = list(dict.fromkeys(u.name for u in ups if u.detector == det))
            rows.append({"detector": det, "sources": sources, "files": files})
        return rows


def _human(n: int | None) -> str:
    if n is None:
        return "size unknown"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def cli(args) -> int:
    """`python -m workbench weights ...`: 0 ok, 2 refused or failed (one-line message on stderr)."""
    manager = WeightsManager(Path(args.weights_dir) if getattr(args, "weights_dir", None) else None,
                             Path(args.manifest) if getattr(args, "manifest", None) else None,
                             progress=not getattr(args, "quiet", False))
    try:
        if args.weights_command == "list":
            for row in manager.listing():
                src = f"  (sources: {', '.join(row['sources'])})" if row["sources"] else ""
                print(f"{row['detector']}{src}")
                for f in row["files"]:
                    state = "installed" if f["installed"] else "not installed"
                    print(f"    {f['file']:<72} {state:<14} trust {f['trust']:<11} {_human(f['size'])}")
            return 0
        if args.weights_command == "install":
            done = manager.install(args.name, args.source)
            print(f"installed {len(done)} file(s) for {args.name}")
            return 0
        if args.weights_command == "add":
            done = manager.add(args.name, Path(args.path), args.source)
            print(f"installed {len(done)} file(s) for {args.name}")
            return 0
        if args.weights_command == "verify":
            ok, problems = manager.verify()
            for line in ok:
                print(line)
            for line in problems:
                print(f"refused: {line}", file=sys.stderr)
            if problems:
                return 2
            print(f"{len(ok)} file(s) verified" if ok else "no installed weights to verify")
            return 0
    except WeightsError as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; a partial download is kept and resumes on the next install", file=sys.stderr)
        return 2
    raise ValueError(f"unknown weights command {args.weights_command!r}")
