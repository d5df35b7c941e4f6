"""Fetch Meta's published checkpoints (and the web annotator's ONNX Runtime Web) into a cache, resuming broken
transfers and verifying checksums.

No torch here: pulling a checkpoint needs nothing but the standard library and rich for the progress bar.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from .specs import get_spec

CHUNK = 1 << 20


class DownloadError(RuntimeError):
    pass


def cache_root() -> Path:
    return Path(os.environ.get("MASKSERVE_CACHE", Path.home() / ".cache" / "maskserve"))


def default_cache_dir() -> Path:
    return cache_root() / "checkpoints"


# ONNX Runtime Web, for the annotator's in-browser decoder: its WebAssembly CPU build is two files, 15 MB
# (3.8 MB zipped) — kept out of the package, pulled from the npm registry once like a checkpoint.
ORT_WEB_VERSION = "1.31.1"
ORT_WEB_TARBALL = f"onnxruntime-web/-/onnxruntime-web-{ORT_WEB_VERSION}.tgz"
ORT_WEB_BYTES = 34586352
ORT_WEB_SHA256 = "bdccdb9fbb9ab537247c0c734e9b1d2b1b338b4f2a09faa58f0dc1cfa27c312c"
ORT_WEB_FILES = ("ort.wasm.bundle.min.mjs", "ort-wasm-simd-threaded.wasm")
NPM_REGISTRY = "https://registry.npmjs.org"


def web_runtime_dir(cache: Path | None = None) -> Path:
    return (cache or cache_root()) / "web" / f"onnxruntime-web-{ORT_WEB_VERSION}"


def pull_web_runtime(cache: Path | None = None, registry: str | None = None, progress: bool = True,
                     size: int = ORT_WEB_BYTES, sha256: str = ORT_WEB_SHA256) -> Path:
    """ONNX Runtime Web's two files into `web_runtime_dir`, from the npm registry's tarball (size and sha256
    checked); a no-op where they are."""
    dest = web_runtime_dir(cache)
    if all((dest / name).is_file() for name in ORT_WEB_FILES):
        return dest
    registry = (registry or os.environ.get("npm_config_registry") or NPM_REGISTRY).rstrip("/")
    tarball = download(f"{registry}/{ORT_WEB_TARBALL}", dest.parent / ORT_WEB_TARBALL.rsplit("/", 1)[1],
                       size=size, progress=progress, sha256=sha256)
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(tarball) as tar:
        for name in ORT_WEB_FILES:  # only these members, by name: nothing else of the archive is written
            member = tar.extractfile(f"package/dist/{name}")
            if member is None:
                raise DownloadError(f"{tarball} has no package/dist/{name}")
            part = dest / f"{name}.part"
            part.write_bytes(member.read())
            part.replace(dest / name)
    tarball.unlink()
    return dest


def _digest(path: Path, algorithm: str) -> str:
    """The file's hex digest; "git-blob": its git object id (sha1 over a "blob <size>\\0" header and the content)."""
    if algorithm == "git-blob":
        h = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    else:
        h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _md5(path: Path) -> str:
    return _digest(path, "md5")


def _mismatch(path: Path, md5: str | None, sha256: str | None, git_blob: str | None = None) -> str | None:
    """What is wrong with the file's content, or None when every digest given matches."""
    for algorithm, expected in (("md5", md5), ("sha256", sha256), ("git-blob", git_blob)):
        if expected is not None and (digest := _digest(path, algorithm)) != expected:
            return f"{algorithm} {digest}, expected {expected}"
    return None


def download(url: str, dest: Path, md5: str | None = None, size: int | None = None,
             progress: bool = True, timeout: float = 60.0, attempts: int = 5, sha256: str | None = None,
             git_blob: str | None = None, headers: dict | None = None, refused: str = "") -> Path:
    """Download `url` to `dest` through `dest.part`, resuming with HTTP Range after a broken transfer.

    The file is moved into place only when its size and digests (md5, sha256, git object id: those given)
    match; a corrupt download is deleted. `headers` go with every request (a gated file's token); `refused` is
    added to the message of a 401 or 403.
    """
    dest = Path(dest)
    if dest.is_file() and _mismatch(dest, md5, sha256, git_blob) is None:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    last_error: Exception | None = None
    for _ in range(attempts):
        try:
            _fetch(url, part, size, progress, timeout, headers or {})
            break
        except (urllib.error.URLError, OSError, DownloadError) as exc:
            last_error = exc
            if isinstance(exc, urllib.error.HTTPError) and exc.code not in (408, 429, 500, 502, 503, 504):
                hint = f"; {refused}" if refused and exc.code in (401, 403) else ""
                raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason}{hint}") from None
    else:
        raise DownloadError(f"{url}: gave up after {attempts} attempts ({last_error}); "
                            f"{part} is kept and the next pull resumes from it")
    got = part.stat().st_size
    if size is not None and got != size:
        part.unlink()
        raise DownloadError(f"{url}: expected {size} bytes, got {got}; the partial file was removed")
    if (wrong := _mismatch(part, md5, sha256, git_blob)) is not None:
        part.unlink()
        raise DownloadError(f"{url}: checksum mismatch ({wrong}); the file was removed")
    part.replace(dest)
    return dest


class _CredentialsStayHome(urllib.request.HTTPRedirectHandler):
    """A token goes to the host it was given for, never along a redirect to another (Hugging Face sends a gated
    file's download to its CDN's signed URL, which must not see the token and may refuse a second credential)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and urllib.parse.urlsplit(newurl).netloc != urllib.parse.urlsplit(req.full_url).netloc:
            new.remove_header("Authorization")
        return new


_OPENER = urllib.request.build_opener(_CredentialsStayHome)


def _fetch(url: str, part: Path, size: int | None, progress: bool, timeout: float, headers: dict) -> None:
    offset = part.stat().st_size if part.exists() else 0
    if size is not None and offset >= size:
        return
    request = urllib.request.Request(url, headers={**headers, **({"Range": f"bytes={offset}-"} if offset else {})})
    with _OPENER.open(request, timeout=timeout) as response:
        if offset and response.status != 206:  # the server ignored Range: start again
            offset = 0
        length = response.headers.get("Content-Length")
        total = size or (offset + int(length) if length else None)
        mode = "ab" if offset else "wb"
        with open(part, mode) as f, _progress(part.name, total, offset, progress) as advance:
            received = 0
            while chunk := response.read(CHUNK):
                f.write(chunk)
                received += len(chunk)
                advance(len(chunk))
        if length is not None and received < int(length):
            raise DownloadError(f"transfer broke off after {offset + received} bytes")


class _progress:
    def __init__(self, name: str, total: int | None, done: int, enabled: bool) -> None:
        self.name, self.total, self.done, self.enabled = name, total, done, enabled

    def __enter__(self):
        if not self.enabled:
            return lambda n: None
        from rich.progress import (BarColumn, DownloadColumn, Progress, TimeRemainingColumn,
                                   TransferSpeedColumn)

        self.bar = Progress("[bold]{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                            TimeRemainingColumn(), transient=False)
        self.bar.start()
        task = self.bar.add_task(self.name, total=self.total, completed=self.done)
        return lambda n: self.bar.advance(task, n)

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self.bar.stop()


def pull(model_type: str, cache_dir: Path | None = None, base_url: str | None = None, progress: bool = True) -> Path:
    """Download the published checkpoint of `model_type` (verified by size and by the digests known for it:
    md5 for SAM, sha256 for SAM 2.1, the git object id for MobileSAM) and return its path. `base_url`: a mirror
    of the publisher's folder for it."""
    spec = get_spec(model_type)
    if not spec.checkpoint_file:
        raise DownloadError(f"{model_type} has no published checkpoint; it is built from this repository")
    url = (base_url.rstrip("/") + "/" + spec.checkpoint_file) if base_url else spec.checkpoint_url
    headers, refused = {}, ""
    if env := getattr(spec, "checkpoint_token_env", None):  # gated: a token of an account that accepted the licence
        page = spec.checkpoint_url.split("/resolve/")[0]
        refused = (f"{spec.name}'s weights are gated: accept the licence at {page} with your account, and set ${env} "
                   "to one of its access tokens")
        if not os.environ.get(env) and not base_url:
            raise DownloadError(f"${env} is not set; {refused}")
        if os.environ.get(env):
            headers["Authorization"] = f"Bearer {os.environ[env]}"
    return download(url, (cache_dir or default_cache_dir()) / spec.checkpoint_file, spec.checkpoint_md5,
                    spec.checkpoint_bytes, progress=progress, sha256=spec.checkpoint_sha256,
                    git_blob=getattr(spec, "checkpoint_git_blob", None), headers=headers, refused=refused)
