"""`maskserve track`: objects prompted on a video's first frame, tracked through it in process (SAM 2.1), the
overlay written as PNG frames; and the one-line errors of a command without a prompt or with a model that cannot
track."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image


def frames_folder(frames, folder: Path) -> Path:
    folder.mkdir()
    for i, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"{i:05d}.png")
    return folder


def track(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "maskserve.cli", "track", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, timeout=120)


def test_track_writes_an_overlay_frame_per_tracked_frame(sam2_tiny_random, video_frames, tmp_path):
    _, model_dir = sam2_tiny_random
    video = frames_folder(video_frames, tmp_path / "clip")
    out = tmp_path / "overlay"
    run = track(video, "--model-dir", model_dir, "--point", "60,120", "--box", "220,60,280,120",
                "--max-frames", "3", "--out", f"{out}/", "--quiet")
    assert run.returncode == 0, run.stderr
    written = sorted(out.iterdir())
    assert [p.name for p in written] == ["00000.png", "00001.png", "00002.png"]
    h, w = video_frames[0].shape[:2]
    for p in written:
        assert np.asarray(Image.open(p).convert("RGB")).shape == (h, w, 3)
    first = np.asarray(Image.open(written[0]).convert("RGB"))
    assert not np.array_equal(first, video_frames[0])  # the prompts (and masks) are drawn on the first frame
    summary = run.stdout.strip().splitlines()[-1]
    assert re.search(r"\b3 frames tracked, 2 objects\b", summary), summary
    assert "frames/s" in summary and str(out) in summary


def test_track_without_a_prompt_is_one_error_line(tmp_path):
    run = track(tmp_path / "any.mp4")
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [
        "error: give at least one --point X,Y or --box X0,Y0,X1,Y1 (each is one object on the first frame)"]


def test_track_with_the_tiny_sam_model_says_it_cannot_track(video_frames, tmp_path):
    video = frames_folder(video_frames[:2], tmp_path / "clip")
    run = track(video, "--point", "60,120", cwd=tmp_path)  # no --model-dir: the shipped tiny SAM model
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), run.stderr
    assert "cannot track video" in lines[0] and "--model-dir" in lines[0]
    assert "Traceback" not in run.stderr
    assert not (tmp_path / "clip_tracked.mp4").exists()  # nothing written
