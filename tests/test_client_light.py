"""The client needs the service's contract and NumPy, not the server: with OpenCV, Pillow, ONNX Runtime,
Redis, the CLI's libraries and torch all unimportable, `maskserve.Client`/`AsyncClient` still encode, predict
(packed bits and RLE), read logits on demand, refine by handle, raise typed errors and run SegmentEverything."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from maskserve.service.stack import LocalStack

SERVER_ONLY = ("cv2", "PIL", "onnxruntime", "redis", "typer", "rich", "prometheus_client", "torch", "hiredis")

SCRIPT = """
import importlib.abc, sys

class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ImportError(f"{{name}} is not installed (a client-only environment)")

sys.meta_path.insert(0, Refuse())
import asyncio
import numpy as np
import maskserve
from maskserve.service import errors
from maskserve.engines.automatic import Options

image = np.random.default_rng(3).integers(0, 255, (120, 160, 3), np.uint8)
for fmt in ("bits", "rle"):
    with maskserve.Client({target!r}, mask_format=fmt) as client:
        client.set_image(image)
        masks, scores, low = client.predict(np.array([[60.0, 50.0]]), np.array([1]))
        assert masks.shape == (3, 120, 160) and masks.dtype == bool and scores.shape == (3,)
        assert np.asarray(low).shape == (3, 256, 256)
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

async def main():
    from maskserve.service.client import AsyncClient
    client = AsyncClient({target!r})
    try:
        await client.set_image(image)
        masks, scores, low = await client.predict(np.array([[60.0, 50.0]]), np.array([1]))
        assert masks.shape == (3, 120, 160)
    finally:
        await client.close()

asyncio.run(main())
assert not [m for m in sys.modules if m.split(".")[0] in {blocked!r}]
print("client-only OK")
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with LocalStack(log_dir=tmp_path_factory.mktemp("light")) as s:
        yield s


def test_the_client_runs_without_the_server_dependencies(stack):
    script = textwrap.dedent(SCRIPT).format(blocked=SERVER_ONLY, target=stack.target)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "client-only OK" in out.stdout, out.stdout + out.stderr
