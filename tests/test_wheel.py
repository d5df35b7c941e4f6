"""A plain (non-editable) install works: the wheel built from this tree, installed into a fresh virtual
environment and made read-only, runs the demo (the local stack and the client) with nothing from the source
tree. The new environment borrows this one's third-party packages through a path file (so no download),
which does not bring this tree's editable install with it."""

from __future__ import annotations

import os
import shutil
import site
import stat
import subprocess
import sys
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="the demo starts redis-server")
def test_wheel_installs_and_runs_the_demo_read_only(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                    str(wheels), str(REPO)], check=True, cwd=tmp_path, timeout=600)
    (wheel,) = wheels.glob("maskserve-*.whl")
    env_dir = tmp_path / "env"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    own = subprocess.run([str(python), "-c", "import site; print(site.getsitepackages()[0])"], check=True,
                         capture_output=True, text=True).stdout.strip()
    (Path(own) / "borrowed.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q",
                    str(wheel)], check=True, timeout=600)
    package = Path(own) / "maskserve"
    for path in [package, *package.rglob("*")]:  # nothing may write into the installed package
        path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    try:
        where = subprocess.run([str(python), "-c", "import maskserve, maskserve.service.proto; "
                                "print(maskserve.__file__)"], check=True, capture_output=True, text=True,
                               cwd=tmp_path).stdout.strip()
        assert where.startswith(own), where
        out = tmp_path / "out"
        env = {k: v for k, v in os.environ.items() if not k.startswith("MASKSERVE_")}
        demo = subprocess.run([str(env_dir / "bin" / "maskserve"), "demo", "--out", str(out)], cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=300)
        assert demo.returncode == 0, demo.stdout + demo.stderr
        assert (out / "mask.png").stat().st_size > 0 and (out / "overlay.png").stat().st_size > 0
    finally:
        for path in [package, *package.rglob("*")]:
            path.chmod(path.stat().st_mode | stat.S_IWUSR)
