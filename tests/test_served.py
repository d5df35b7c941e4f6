"""`maskserve up --model NAME`: a model by name → a model directory, built once from the checkpoint (pulled,
or given) into the cache and reused; on an install without the export extra, one clear line before any
download. The build itself is tests/test_export.py's; here the seeded vit_b checkpoint's directory stands in
for the cache's."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

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
