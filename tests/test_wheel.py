"""Plain (non-editable) installs work, from the wheel built from this tree:

- `pip install maskserve` is the client: in a fresh environment whose dependencies pip resolves from the
  package index, only grpc, protobuf, NumPy and pycocotools arrive, and `Client`/`AsyncClient`, typed errors,
  refinement by handle and the automatic generator over RPC all run against a local stack; the command line
  says in one line that it needs the `server` extra.
- The client (`maskserve.client`, exported as `maskserve.Client` ...) imports nothing of the server: no
  `maskserve.service` module, no backend, no server package — checked there, and here, where all of them are
  installed and importable.
- `pip install 'maskserve[server]'` runs the demo (the local stack and the client) from a read-only install
  with nothing from the source tree: the tiny model and the demo photo come from the `maskserve-tiny`
  distribution (packages/maskserve-tiny) that the extra requires. That environment borrows this one's
  third-party packages through a path file (so no download), which does not bring this tree's editable
  installs with it.
- The base wheel is small and code only (CLIENT_WHEEL_BOUND; no model weights, photos or trainer), and both
  wheels build without a setuptools warning. They are built from a copy of the source tree: an in-place build
  reuses setuptools' build folder (.setuptools-build), whose files from earlier builds it would pack again.
"""

from __future__ import annotations

import os
import shutil
import site
import stat
import subprocess
import sys
import textwrap
import venv
import zipfile
from pathlib import Path

import pytest

from conftest import report
from maskserve.service.stack import LocalStack

REPO = Path(__file__).resolve().parent.parent
SERVER_ONLY = ("cv2", "PIL", "onnxruntime", "redis", "typer", "rich", "prometheus_client", "torch", "hiredis",
               "grpc_health", "grpc_reflection", "opentelemetry")
# What the client must never import: the service, the build and command-line modules, the in-process backends.
SERVER_MODULES = ("maskserve.service", "maskserve.build", "maskserve.cli", "maskserve.bench", "maskserve.soak",
                  "maskserve.engines.predictor", "maskserve.engines.onnxruntime_backend",
                  "maskserve.engines.tensorrt_backend", "maskserve.engines.torch_backend",
                  "maskserve.engines.torch_hiera")
# The base wheel (the client, and the server's code): 300,582 bytes when the tiny model and the demo photo
# moved to maskserve-tiny (6,666,068 before); 23 kB of it the annotator and the OpenAPI document, compressed.
CLIENT_WHEEL_BOUND = 400_000
# What only a data distribution ships: model weights, compiled engines, arrays, images.
DATA_SUFFIXES = (".onnx", ".pth", ".pt", ".ckpt", ".safetensors", ".engine", ".plan", ".npy", ".npz", ".bin",
                 ".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")
needs_redis = pytest.mark.skipif(shutil.which("redis-server") is None, reason="the local stack starts redis-server")

# Imports the client by every name it is exported under, then fails naming any server module it brought in.
CLIENT_IMPORTS = """
import sys
import maskserve
exported = (maskserve.Client, maskserve.AsyncClient, maskserve.RemoteLogits, maskserve.MaskserveError,
            maskserve.errors.NotFound)
from maskserve.client import AsyncClient, Client, RemoteLogits, errors


def server_modules():
    return sorted(m for m in sys.modules if m.split(".")[0] in {blocked!r}
                  or any(m == s or m.startswith(s + ".") for s in {server!r}))


assert not server_modules(), f"the client imported the server's {{server_modules()}}"
print("client imports:", " ".join(sorted(m for m in sys.modules if m.startswith("maskserve"))))
"""

SCRIPT = """
import asyncio, importlib.util, sys
assert not [m for m in {blocked!r} if importlib.util.find_spec(m)], "a server package is installed"
""" + CLIENT_IMPORTS + """
import numpy as np
from maskserve.engines.automatic import Options

image = np.random.default_rng(3).integers(0, 255, (120, 160, 3), np.uint8)
for fmt in ("bits", "rle"):
    with maskserve.Client({target!r}, mask_format=fmt) as client:
        client.set_image(image)
        masks, scores, low = client.predict(np.array([[60.0, 50.0]]), np.array([1]))
        assert masks.shape == (3, 120, 160) and masks.dtype == bool and scores.shape == (3,)
        assert np.asarray(low).shape == (3, 256, 256)
        logits = client.predict(np.array([[60.0, 50.0]]), np.array([1]), return_logits=True)[0]  # upscaled here
        assert logits.shape == (3, 120, 160) and ((logits > 0) == masks).mean() > 0.999
        refined = client.predict(np.array([[70.0, 55.0]]), np.array([1]), mask_input=low[int(scores.argmax())][None],
                                 multimask_output=False)
        assert refined[0].shape == (1, 120, 160)
        client.image_id = "0" * 32
        try:
            client.predict(np.array([[1.0, 1.0]]), np.array([1]))
            raise SystemExit("no error for an unknown image")
        except errors.NotFound as exc:
            assert exc.reason == "IMAGE_NOT_FOUND"
        found = client.segment_everything(image, Options(points_per_side=4, pred_iou_thresh=0.0,
                                                         stability_score_thresh=0.0))
        assert len(found.rles) > 0
        records = maskserve.AutomaticMaskGenerator(client, points_per_side=4, pred_iou_thresh=0.0,
                                                   stability_score_thresh=0.0).generate(image)
        assert records and records[0]["segmentation"].shape == (120, 160)

async def main():
    client = AsyncClient({target!r})
    try:
        await client.set_image(image)
        masks, scores, low = await client.predict(np.array([[60.0, 50.0]]), np.array([1]))
        assert masks.shape == (3, 120, 160)
    finally:
        await client.close()

asyncio.run(main())
assert not server_modules(), f"the client imported the server's {{server_modules()}}"
for make in (lambda: maskserve.Predictor(), lambda: maskserve.AutomaticMaskGenerator()):  # one clear line
    try:
        make()
        raise SystemExit("an in-process model ran without the server extra")
    except ImportError as exc:
        assert "pip install 'maskserve[server]'" in str(exc) and "\\n" not in str(exc), exc
print("client-only OK")
"""


def _source_copy(dest: Path) -> Path:
    """The source tree as a clone has it (links kept: packages/maskserve-tiny links to the model and photo)."""
    top = {".git", ".venv", "out", "site", ".whl", ".setuptools-build", ".pytest_cache", ".hypothesis"}

    def ignore(folder: str, names: list[str]) -> set[str]:
        skip = {n for n in names if n == "__pycache__" or n.endswith(".egg-info")}
        if Path(folder) == REPO:
            skip |= top & set(names)
        if Path(folder) == REPO / "packages" / "maskserve-tiny":
            skip |= {"build"} & set(names)  # its setuptools scratch folder
        return skip

    shutil.copytree(REPO, dest, symlinks=True, ignore=ignore)
    return dest


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, object]:
    """Both wheels, built as a release builds them, and what each build printed."""
    src = _source_copy(tmp_path_factory.mktemp("source") / "maskserve")
    wheels = tmp_path_factory.mktemp("wheels")
    logs = {}
    for name, project in (("maskserve", src), ("maskserve_tiny", src / "packages" / "maskserve-tiny")):
        build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w",
                                str(wheels), str(project)], capture_output=True, text=True, timeout=600, cwd=wheels)
        assert build.returncode == 0, build.stdout + build.stderr
        logs[name] = build.stdout + build.stderr
    (client,) = wheels.glob("maskserve-*.whl")
    (tiny,) = wheels.glob("maskserve_tiny-*.whl")
    return {"wheel": client, "tiny": tiny, "logs": logs}


@pytest.fixture(scope="module")
def wheel(built) -> Path:
    return built["wheel"]


def _metadata(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as z:
        (name,) = [n for n in z.namelist() if n.endswith(".dist-info/METADATA")]
        return z.read(name).decode().splitlines()


def test_both_wheels_build_without_warnings(built):
    """A shipped folder absent from `packages` costs ~40 lines of setuptools warnings in every install."""
    for name, log in built["logs"].items():
        warnings = [line for line in log.splitlines() if "warning" in line.lower()]
        assert not warnings, f"{name}:\n" + "\n".join(warnings)


def test_the_client_wheel_is_small_and_code_only(wheel):
    with zipfile.ZipFile(wheel) as z:
        shipped = z.namelist()
    size = wheel.stat().st_size
    data = sorted(n for n in shipped if n.lower().endswith(DATA_SUFFIXES))
    assert not data, f"model weights or images in the base wheel: {data}"
    assert not [n for n in shipped if n.startswith(("maskserve/models/", "maskserve/data/", "maskserve/build/tiny/"))]
    # The service's own small files stay: the annotator and the HTTP API's document, served from the package.
    web = {p.name for p in (REPO / "service" / "web").iterdir() if p.is_file()}
    assert {"maskserve/v1/openapi.json"} | {f"maskserve/service/web/{n}" for n in web} <= set(shipped)
    other = sorted(n for n in shipped if not n.endswith((".py", ".pyi")) and ".dist-info/" not in n)
    report(f"the base (client) wheel: {size:,} bytes, {len(shipped)} files; besides code: {', '.join(other)}")
    assert size < CLIENT_WHEEL_BOUND, f"the base wheel is {size:,} bytes, over {CLIENT_WHEEL_BOUND:,}"


def test_the_server_extra_requires_the_tiny_wheel(built):
    """maskserve-tiny carries the whole model directory and the photo, never the training checkpoint, and the
    `server` extra asks for it by name and version (a published wheel may not name a path or URL)."""
    from packaging.requirements import Requirement

    tiny = built["tiny"]
    with zipfile.ZipFile(tiny) as z:
        shipped = set(z.namelist())
    model = {f"maskserve_tiny/model/{p.name}" for p in (REPO / "maskserve" / "models" / "tiny").iterdir()}
    assert model | {"maskserve_tiny/__init__.py", "maskserve_tiny/astronaut.jpg"} <= shipped
    assert not [n for n in shipped if n.endswith(".pth")]
    version = next(line.split(": ", 1)[1] for line in _metadata(tiny) if line.startswith("Version: "))
    requires = [Requirement(line.split(": ", 1)[1]) for line in _metadata(built["wheel"])
                if line.startswith("Requires-Dist: ")]
    assert not [r for r in requires if r.url], "a path or URL in the published metadata"
    (needs,) = [r for r in requires if r.name == "maskserve-tiny"]
    assert needs.marker and needs.marker.evaluate({"extra": "server"}) and not needs.marker.evaluate({"extra": ""})
    assert needs.specifier.contains(version), (str(needs), version)
    report(f"maskserve-tiny wheel: {tiny.stat().st_size:,} bytes ({len(shipped)} files), {needs} in [server]")


def _site_packages(python: Path) -> Path:
    return Path(subprocess.run([str(python), "-c", "import site; print(site.getsitepackages()[0])"], check=True,
                               capture_output=True, text=True).stdout.strip())


def test_the_client_imports_nothing_of_the_server(tmp_path):
    """Here every server package is installed: the client must still not import one (but grpc's own import of
    grpc_health and grpc_reflection, which it does whenever they are installed)."""
    blocked = tuple(m for m in SERVER_ONLY if m not in ("grpc_health", "grpc_reflection"))
    script = textwrap.dedent(CLIENT_IMPORTS).format(blocked=blocked, server=SERVER_MODULES)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 0 and "client imports:" in out.stdout, out.stdout + out.stderr
    assert "maskserve.client" in out.stdout.split(), out.stdout


@needs_redis
def test_plain_install_is_the_client(wheel, tmp_path):
    env_dir = tmp_path / "client-env"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", str(wheel)], check=True, timeout=600)
    installed = subprocess.run([str(python), "-m", "pip", "list", "--format=freeze"], check=True,
                               capture_output=True, text=True).stdout.lower()
    assert not [p for p in ("onnxruntime", "opencv", "redis", "typer", "pillow", "prometheus", "maskserve-tiny")
                if p in installed]
    (tmp_path / "logs").mkdir()
    with LocalStack(log_dir=tmp_path / "logs") as stack:
        script = textwrap.dedent(SCRIPT).format(blocked=SERVER_ONLY, server=SERVER_MODULES, target=stack.target)
        out = subprocess.run([str(python), "-c", script], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0 and "client-only OK" in out.stdout, out.stdout + out.stderr
    cli = subprocess.run([str(env_dir / "bin" / "maskserve"), "demo"], capture_output=True, text=True, timeout=60)
    assert cli.returncode == 1 and "pip install 'maskserve[server]'" in cli.stderr, cli.stderr
    assert len(cli.stderr.strip().splitlines()) == 1, cli.stderr


@needs_redis
def test_server_install_runs_the_demo_read_only(built, tmp_path):
    env_dir = tmp_path / "env"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    own = _site_packages(python)
    (own / "borrowed.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q",
                    str(built["wheel"]), str(built["tiny"])], check=True, timeout=600)
    package = own / "maskserve"
    installed = [package, *package.rglob("*"), own / "maskserve_tiny", *(own / "maskserve_tiny").rglob("*")]
    for path in installed:  # nothing may write into the installed packages
        path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    try:
        where = subprocess.run([str(python), "-c", "import maskserve, maskserve.service.proto; "
                                "from maskserve.engines import default_model_dir; "
                                "from maskserve.service.segment_file import BUNDLED_PHOTO; "
                                "print(maskserve.__file__, default_model_dir(), BUNDLED_PHOTO, sep='\\n')"],
                               check=True, capture_output=True, text=True, cwd=tmp_path).stdout.split("\n")
        assert where[0].startswith(str(own)), where  # the installed packages, not the source tree's files
        assert where[1:3] == [str(own / "maskserve_tiny" / "model"), str(own / "maskserve_tiny" / "astronaut.jpg")]
        web = [p for p in (package / "service" / "web").iterdir() if p.is_file()]  # the annotator, and the
        assert {"index.html", "app.js"} <= {p.name for p in web} and (package / "v1" / "openapi.json").is_file()  # API
        report(f"the web annotator's files in the wheel: {sum(p.stat().st_size for p in web)} bytes "
               f"({len(web)} files; ONNX Runtime Web is pulled, not shipped)")
        out = tmp_path / "out"
        env = {k: v for k, v in os.environ.items() if not k.startswith("MASKSERVE_")}
        demo = subprocess.run([str(env_dir / "bin" / "maskserve"), "demo", "--out", str(out)], cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=300)
        assert demo.returncode == 0, demo.stdout + demo.stderr
        assert (out / "mask.png").stat().st_size > 0 and (out / "overlay.png").stat().st_size > 0
    finally:
        for path in installed:
            path.chmod(path.stat().st_mode | stat.S_IWUSR)
