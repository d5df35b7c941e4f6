"""Every example of the docs runs: each ```bash and ```python block of docs/*.md against a real local stack
(authentication on, an API key in MASKSERVE_KEY), from a folder laid out like the repository root."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from maskserve.service import access
from maskserve.service.stack import LocalStack, free_port

REPO = Path(__file__).resolve().parent.parent
DOCS = sorted((REPO / "docs").glob("*.md"))
BLOCK = re.compile(r"```(bash|python)\n(.*?)```", re.S)
KEY = access.new_key()


def blocks() -> list[tuple[str, int, str, str]]:
    return [(doc.name, i, lang, code) for doc in DOCS for i, (lang, code) in enumerate(BLOCK.findall(doc.read_text()))]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    d = tmp_path_factory.mktemp("docs")
    (d / "access.json").write_text(json.dumps({"keys": [{"tenant": "docs", "sha256": access.key_hash(KEY)}]}))
    with LocalStack(log_dir=d, extra_env={"MASKSERVE_AUTH_FILE": str(d / "access.json")},
                    http_port=free_port()) as s:
        yield s


@pytest.mark.skipif(not shutil.which("curl") or not shutil.which("jq"), reason="the examples use curl and jq")
@pytest.mark.parametrize("doc,index,lang,code", blocks(), ids=lambda v: v if isinstance(v, (str, int)) else "")
def test_the_example_runs(stack, tmp_path, doc, index, lang, code):
    (tmp_path / "maskserve" / "data").mkdir(parents=True)
    shutil.copy(REPO / "maskserve" / "data" / "astronaut.jpg", tmp_path / "maskserve" / "data")
    command = ["bash", "-euo", "pipefail", "-c", code] if lang == "bash" else [sys.executable, "-c", code]
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "MASKSERVE": stack.url, "MASKSERVE_KEY": KEY}
    run = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, f"{doc} block {index}:\n{run.stdout[-2000:]}\n{run.stderr[-2000:]}"
    if "mask.png" in code:
        assert (tmp_path / "mask.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
