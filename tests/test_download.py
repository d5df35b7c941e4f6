"""`maskserve models pull` against a loopback HTTP server that serves a generated checkpoint."""

from __future__ import annotations

import hashlib
import http.server
import subprocess
import sys
import threading

import pytest

from maskserve.build.download import DownloadError, download

PAYLOAD = bytes(range(256)) * 4096 * 3  # 3 MiB: several chunks


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves PAYLOAD with Range support; `server.break_after` cuts the first transfers short."""

    def do_GET(self):  # noqa: N802
        server = self.server
        server.requests.append(self.headers.get("Range"))
        server.authorizations.append(self.headers.get("Authorization"))
        body = server.payload
        start = 0
        if rng := self.headers.get("Range"):
            start = int(rng.split("=")[1].split("-")[0])
        if self.path.endswith("missing.pth"):
            self.send_error(404)
            return
        if server.gated and self.path.endswith("sam3.pt") and self.headers.get("Authorization") != "Bearer hf_ok":
            self.send_error(401)
            return
        if self.path.endswith("sam3.pt") and server.redirect_to:  # as Hugging Face sends it to its CDN
            self.send_response(302)
            self.send_header("Location", server.redirect_to + self.path)
            self.end_headers()
            return
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(body) - start))
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.end_headers()
        chunk = body[start:]
        if server.breaks > 0:
            server.breaks -= 1
            chunk = chunk[: len(chunk) // 2]  # promise everything, send half, hang up
        self.wfile.write(chunk)

    def log_message(self, *args):
        pass


def _serve(gated: bool = True):
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.payload, httpd.breaks, httpd.requests, httpd.authorizations = PAYLOAD, 0, [], []
    httpd.gated, httpd.redirect_to = gated, None
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


@pytest.fixture
def server():
    httpd = _serve()
    yield httpd
    httpd.shutdown()


def test_a_token_does_not_follow_a_redirect_to_another_host(server, tmp_path):
    """The gated file's host sends the download on to a CDN (another host): the token stays behind."""
    cdn = _serve(gated=False)
    try:
        server.redirect_to = f"http://127.0.0.1:{cdn.server_address[1]}"
        got = download(_url(server, "sam3.pt"), tmp_path / "sam3.pt", size=len(PAYLOAD), progress=False,
                       headers={"Authorization": "Bearer hf_ok"})
    finally:
        cdn.shutdown()
    assert got.read_bytes() == PAYLOAD
    assert server.authorizations == ["Bearer hf_ok"] and cdn.authorizations == [None]


def _url(server, name="sam.pth"):
    return f"http://127.0.0.1:{server.server_address[1]}/{name}"


MD5 = hashlib.md5(PAYLOAD).hexdigest()


def test_download_verifies_and_places_the_file(server, tmp_path):
    path = download(_url(server), tmp_path / "sam.pth", md5=MD5, size=len(PAYLOAD), progress=False)
    assert path.read_bytes() == PAYLOAD
    assert not (tmp_path / "sam.pth.part").exists()


def test_broken_transfer_resumes_with_range(server, tmp_path):
    server.breaks = 2
    path = download(_url(server), tmp_path / "sam.pth", md5=MD5, size=len(PAYLOAD), progress=False)
    assert path.read_bytes() == PAYLOAD
    assert server.requests[0] is None and all(r and r.startswith("bytes=") for r in server.requests[1:])


def test_resume_after_an_interrupted_pull(server, tmp_path):
    (tmp_path / "sam.pth.part").write_bytes(PAYLOAD[:1000])
    download(_url(server), tmp_path / "sam.pth", md5=MD5, size=len(PAYLOAD), progress=False)
    assert server.requests == ["bytes=1000-"]
    assert (tmp_path / "sam.pth").read_bytes() == PAYLOAD


def test_wrong_checksum_is_refused_and_removed(server, tmp_path):
    with pytest.raises(DownloadError, match="checksum mismatch"):
        download(_url(server), tmp_path / "sam.pth", md5="0" * 32, size=len(PAYLOAD), progress=False)
    assert not (tmp_path / "sam.pth").exists() and not (tmp_path / "sam.pth.part").exists()


def test_http_error_is_reported(server, tmp_path):
    with pytest.raises(DownloadError, match="HTTP 404"):
        download(_url(server, "missing.pth"), tmp_path / "x.pth", progress=False)


def test_cli_pull_of_a_published_name_checks_its_published_size_and_md5(server, tmp_path):
    base = f"http://127.0.0.1:{server.server_address[1]}/"
    out = subprocess.run([sys.executable, "-m", "maskserve.cli", "models", "pull", "vit_b", "--quiet",
                          "--cache-dir", str(tmp_path), "--base-url", base], capture_output=True, text=True)
    assert out.returncode == 2
    assert "expected 375042383 bytes" in out.stderr.replace("\n", "")
    assert not list(tmp_path.iterdir())


def test_sha256_is_verified(server, tmp_path):
    """SAM 2.1's published digests are sha256."""
    sha256 = hashlib.sha256(PAYLOAD).hexdigest()
    path = download(_url(server), tmp_path / "sam2.pt", size=len(PAYLOAD), progress=False, sha256=sha256)
    assert path.read_bytes() == PAYLOAD
    assert download(_url(server), path, progress=False, sha256=sha256) == path  # verified, not fetched again
    assert len(server.requests) == 1
    with pytest.raises(DownloadError, match=f"checksum mismatch \\(sha256 {sha256}, expected 0+\\)"):
        download(_url(server), tmp_path / "other.pt", size=len(PAYLOAD), progress=False, sha256="0" * 64)
    assert not (tmp_path / "other.pt").exists() and not (tmp_path / "other.pt.part").exists()


def test_cli_pull_of_a_sam2_name_checks_its_published_size(server, tmp_path):
    base = f"http://127.0.0.1:{server.server_address[1]}/"
    out = subprocess.run([sys.executable, "-m", "maskserve.cli", "models", "pull", "sam2.1_hiera_tiny", "--quiet",
                          "--cache-dir", str(tmp_path), "--base-url", base], capture_output=True, text=True)
    assert out.returncode == 2
    assert "sam2.1_hiera_tiny.pt: expected 156008466 bytes" in out.stderr.replace("\n", "")
    assert server.requests and not list(tmp_path.iterdir())


def test_git_object_id_is_verified(server, tmp_path):
    """MobileSAM's one published digest is its checkpoint's git object id: sha1 over "blob <size>\\0" + content,
    as `git hash-object` computes it."""
    blob = subprocess.run(["git", "hash-object", "--stdin"], input=PAYLOAD, capture_output=True, check=True)
    git_blob = blob.stdout.decode().strip()
    path = download(_url(server), tmp_path / "mobile_sam.pt", size=len(PAYLOAD), progress=False, git_blob=git_blob)
    assert path.read_bytes() == PAYLOAD
    with pytest.raises(DownloadError, match=f"checksum mismatch \\(git-blob {git_blob}, expected 0+\\)"):
        download(_url(server), tmp_path / "other.pt", size=len(PAYLOAD), progress=False, git_blob="0" * 40)
    assert not (tmp_path / "other.pt").exists()


def test_cli_pull_of_mobile_sam_checks_its_published_size(server, tmp_path):
    """`mobile_sam` is the publisher's name for model type vit_t; its checkpoint comes from the authors' repository
    at a pinned commit, or from a mirror."""
    from maskserve.build.specs import get_spec

    spec = get_spec("mobile_sam")
    assert spec.name == "vit_t" and spec.family == "mobile_sam"
    assert spec.checkpoint_url.startswith("https://github.com/ChaoningZhang/MobileSAM/raw/")
    base = f"http://127.0.0.1:{server.server_address[1]}/"
    out = subprocess.run([sys.executable, "-m", "maskserve.cli", "models", "pull", "mobile_sam", "--quiet",
                          "--cache-dir", str(tmp_path), "--base-url", base], capture_output=True, text=True)
    assert out.returncode == 2
    assert "mobile_sam.pt: expected 40728226 bytes" in out.stderr.replace("\n", "")
    assert server.requests and not list(tmp_path.iterdir())


def test_cli_pull_of_sam3_sends_the_token_and_checks_its_published_size(server, tmp_path, monkeypatch):
    """SAM 3's weights are gated on Hugging Face: the pull sends $HF_TOKEN as a bearer token, names the licence
    page when it is missing or refused, and checks the file as for the others."""
    from maskserve.build.specs import get_spec

    spec = get_spec("sam3")
    assert spec.checkpoint_url == "https://huggingface.co/facebook/sam3/resolve/main/sam3.pt"
    base = f"http://127.0.0.1:{server.server_address[1]}/"
    pull = [sys.executable, "-m", "maskserve.cli", "models", "pull", "sam3", "--quiet", "--cache-dir", str(tmp_path)]
    monkeypatch.delenv("HF_TOKEN", raising=False)
    out = subprocess.run(pull, capture_output=True, text=True)
    assert out.returncode == 2 and "$HF_TOKEN is not set" in out.stderr and "huggingface.co/facebook/sam3" in \
        out.stderr.replace("\n", "")
    out = subprocess.run(pull + ["--base-url", base], capture_output=True, text=True,
                         env={**__import__("os").environ, "HF_TOKEN": "hf_wrong"})
    assert out.returncode == 2 and "HTTP 401" in out.stderr and "accept the licence" in out.stderr.replace("\n", " ")
    out = subprocess.run(pull + ["--base-url", base], capture_output=True, text=True,
                         env={**__import__("os").environ, "HF_TOKEN": "hf_ok"})
    assert out.returncode == 2 and "sam3.pt: expected 3450062241 bytes" in out.stderr.replace("\n", "")
    assert server.authorizations[-1] == "Bearer hf_ok" and not list(tmp_path.iterdir())
