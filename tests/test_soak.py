"""The soak's short form (the long one: `maskserve soak --seconds 1800`): a fixed rate of prompts and new images
for a bounded time; no errors, no process dies, the decoder's bookkeeping returns to zero and memory holds."""

from __future__ import annotations

from conftest import report

from maskserve import soak


def test_short_soak_does_not_drift():
    result = soak.run(seconds=24, rate=10, new_image_every=5, window=6)
    report(soak.report(result))
    windows, end = result["windows"], result["end"]
    assert end["alive"] and len(windows) >= 4
    assert all(not w["errors"] for w in windows), [w["errors"] for w in windows]
    assert sum(w["encodes"] for w in windows) >= 40  # many distinct images, each waited for
    assert end["waiting_images"] == 0 and end["lru_entries"] <= 64
    # after the first window (start-up, first allocations) the decoder's memory stays where it was
    assert end["rss_mb"]["decoder"] - windows[1]["rss_mb"]["decoder"] < 40, (windows, end)
