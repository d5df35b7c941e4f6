"""The service roles' allocator setting: a request's large temporaries are reused, not mapped afresh."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

# Post-processing of three masks in miniature: several 3 MB arrays alive at once, written, then dropped.
CHURN = """
import resource, sys
import numpy as np
from maskserve.service import allocator
if sys.argv[1] == "tuned":
    assert allocator.reuse_large_blocks()
def request():
    arrays = [np.ones((768, 1024), np.float32) for _ in range(4)]
    del arrays
for _ in range(5):
    request()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    request()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _page_faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", CHURN, mode], capture_output=True, text=True, check=True)
    return int(out.stdout)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the C library is not glibc")
def test_large_temporaries_come_back_from_the_heap():
    pages_per_request = 4 * 768 * 1024 * 4 // 4096
    default, tuned = _page_faults("default"), _page_faults("tuned")
    assert default > 10 * pages_per_request  # glibc's defaults map and fault them in again, request after request
    assert tuned < pages_per_request  # tuned: no request after the first few touches fresh pages
