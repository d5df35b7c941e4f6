"""`maskserve up --model NAME`: a model by name → a model directory, built once from the checkpoint (pulled,
or given) into the cache and reused; on an install without the export extra, one clear line before any
download. The build itself is tests/test_export.py's; here the seeded vit_b checkpoint's directory stands in
for the cache's."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from maskserve.build.served import model_dir_for
from maskserve.build.specs import UnknownModelType


def cached(vit_b_random, cache):
    """The seeded vit_b's built directory where the cache keeps it (its checkpoint's sha256)."""
    checkpoint, built = vit_b_random
    digest = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    (cache / "models").mkdir(parents=True)
    (cache / "models" / f"vit_b-{digest[:12]}").symlink_to(built, target_is_directory=True)
    return checkpoint, built


def test_a_model_by_name_is_built_once_into_the_cache(vit_b_random, tmp_path):
    checkpoint, built = cached(vit_b_random, tmp_path)
    found = model_dir_for("vit_b", checkpoint, cache=tmp_path)
    assert found.resolve() == built.resolve()
    assert model_dir_for(str(built)) == built  # a directory is served as it is
    with pytest.raises(UnknownModelType, match="vit_b"):
        model_dir_for("vit_x", checkpoint, cache=tmp_path)


def test_without_the_export_extra_it_says_so_before_downloading(tmp_path):
    script = ("import sys; sys.modules['torch'] = None\n"  # as on an install without torch
              "from maskserve.build.served import CannotBuild, model_dir_for\n"
              "try:\n    model_dir_for('vit_b')\nexcept CannotBuild as exc:\n    print(exc)\n")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "MASKSERVE_CACHE": str(tmp_path)})
    assert "needs the export extra (missing: torch)" in run.stdout and "pip install 'maskserve[export]'" in run.stdout
    assert not (tmp_path / "checkpoints").exists()  # nothing was downloaded


def test_up_serves_a_model_by_name(vit_b_random, tmp_path):
    """`maskserve up --model vit_b --checkpoint FILE` (here the seeded checkpoint, already in the cache) serves
    that model; a client's click is answered by it."""
    import signal
    import time

    import numpy as np

    from maskserve.client import Client
    from maskserve.service.stack import free_port, wait_serving

    cached(vit_b_random, tmp_path / "cache")
    checkpoint = vit_b_random[0]
    port, http_port, metrics_port = free_port(), free_port(), free_port()
    env = {**os.environ, "MASKSERVE_CACHE": str(tmp_path / "cache")}
    command = [str(Path(sys.executable).parent / "maskserve"), "up", "--model", "vit_b", "--checkpoint",
               str(checkpoint), "--port", str(port), "--http-port", str(http_port), "--metrics-port",
               str(metrics_port)]
    up = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          start_new_session=True)
    try:
        wait_serving(f"127.0.0.1:{port}", timeout=300, proc=up)
        with Client(f"127.0.0.1:{port}", timeout=300) as client:
            assert client.model_info().model_type == "vit_b"
            client.set_image(np.random.default_rng(0).integers(0, 255, (120, 160, 3), np.uint8))
            masks, scores, _ = client.predict(np.array([[80.0, 60.0]]), np.array([1]))
            assert masks.shape == (3, 120, 160)
    finally:
        os.killpg(up.pid, signal.SIGTERM)
        output = up.communicate(timeout=60)[0]
    assert f"model vit_b: {tmp_path / 'cache' / 'models'}" in output, output
    conflicting = subprocess.run(command[:4] + ["--model-dir", "x"], capture_output=True, text=True, env=env)
    assert conflicting.returncode != 0 and "not both" in conflicting.stderr
