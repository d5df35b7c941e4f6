"""The command line as a newcomer meets it: help in words (no Python type names, defaults as people write them,
every option described), `--version`, usage errors in one line; `maskserve up` saying what to run next (and that
working), a refused or failed `up` leaving no temporary folder behind unless it has logs to show; `segment`
drawing its box, counting masks from 1, writing every candidate and a JSON summary; and a wheel built without
setuptools' warnings that still carries the package data."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

import maskserve
from maskserve.cli import app
from maskserve.service.segment_file import BOX_COLOUR, BUNDLED_PHOTO, FOREGROUND
from maskserve.service.stack import free_port

REPO = Path(__file__).resolve().parent.parent
needs_redis = pytest.mark.skipif(shutil.which("redis-server") is None, reason="the local stack starts redis-server")


def cli(*args, cwd=None, env=None, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "maskserve.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env={**os.environ, **(env or {})}, timeout=timeout)


def one_error_line(run: subprocess.CompletedProcess) -> str:
    lines = run.stderr.strip().splitlines()
    assert run.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), run.stderr
    assert "Traceback" not in run.stderr
    return lines[0]


def commands(group=None, path=()):
    """Every command path of the CLI, groups included: ((), ("models",), ("models", "pull"), ...)."""
    group = group or typer.main.get_command(app)
    yield path, group
    for name, command in getattr(group, "commands", {}).items():
        yield from commands(command, (*path, name))


def help_text(*path: str) -> str:
    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    return result.output


# -- help ------------------------------------------------------------------------------------------------------------

def test_help_speaks_in_words_not_python_types():
    for path, _ in commands():
        text = help_text(*path)
        assert not re.search(r"<\w+(\[\w+\])?>|list\[|\bINT RANGE\b|x>=|\(dynamic\)", text), (path, text)
        assert not re.search(r"\d\.\d{7,}", text), (path, text)  # 0.3413333333333333: say 512 / 1500
        assert "[default: ]" not in text and "[default: (" not in text, (path, text)
    segment = help_text("segment")
    assert re.search(r"--point\s+X,Y\[,LABEL\]", segment) and re.search(r"--box\s+X0,Y0,X1,Y1", segment), segment
    assert re.search(r"--target\s+HOST:PORT", segment) and re.search(r"Usage: \S+ segment \[OPTIONS\] IMAGE\s", segment)
    assert re.search(r"--help\s+Show this message", segment)  # a flag: no type between it and its help
    everything = help_text("segment-everything")
    assert "[default: 512 / 1500]" in everything and "0.341" not in everything, everything
    assert re.search(r"--points-per-side\s+N\s", everything) and "[default: True]" not in everything
    assert re.search(r"--max-frames\s+N \[at least 1\]", help_text("track"))


def test_every_option_has_help_and_the_service_flags_name_their_variable():
    for path, command in commands():
        for param in command.params:
            if param.param_type_name == "option":
                assert (param.help or "").strip(), (path, param.name)
    for role in ("encoder", "decoder"):
        text = help_text(role)
        for flag, variable in (("--redis-url", "MASKSERVE_REDIS_URL"), ("--model-dir", "MASKSERVE_MODEL_DIR"),
                               ("--metrics-port", "MASKSERVE_METRICS_PORT")):
            assert re.search(rf"{flag}\s+\S+\s+[^\n]*overrides {variable} \(default", text), (role, flag, text)
        assert "maskserve settings" in text
    decoder = help_text("decoder")
    assert "overrides MASKSERVE_GRPC_PORT (default 50051)" in decoder
    assert "overrides MASKSERVE_METRICS_PORT (default 9090)" in decoder


def test_help_keeps_bracketed_text_and_joins_docstring_lines():
    top = help_text()
    # A docstring's line break in the source is not one on the screen (it was: "... SA-1B's fields and an\n").
    assert re.search(r"segment-everything\s+Every object in an image[^\n]*fields and an overlay", top), top
    assert "[env var: MASKSERVE_API_KEY]" in help_text("segment")


def test_version():
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0, result.output
    assert re.match(rf"maskserve {re.escape(maskserve.__version__)} \(API maskserve\.v1\b", result.output), result.output
    assert "--version" in help_text()


# -- one-line errors -------------------------------------------------------------------------------------------------

def test_usage_errors_are_one_line():
    line = one_error_line(cli("segment", BUNDLED_PHOTO, "--point", "250", "200"))
    assert "unexpected extra argument" in line and "--point 250,200" in line, line
    assert "Did you mean 'segment'?" in one_error_line(cli("segmnt"))
    assert "Missing argument 'IMAGE'" in one_error_line(cli("segment"))
    assert "No such option: --pint" in one_error_line(cli("segment", BUNDLED_PHOTO, "--pint", "1,1"))


def test_segment_mistakes_found_before_calling_are_one_line(tmp_path):
    target = f"127.0.0.1:{free_port()}"
    line = one_error_line(cli("segment", BUNDLED_PHOTO, "--box", "300,300,100,100", "--target", target))
    assert "--box 300,300,100,100: X1 must be greater than X0" in line
    afile = tmp_path / "notes.txt"
    afile.write_text("")
    assert "is a file" in one_error_line(cli("segment", BUNDLED_PHOTO, "--point", "1,1", "--out", afile))
    line = one_error_line(cli("segment", BUNDLED_PHOTO, "--point", "1,1", "--target", target))
    assert f"no service answers at {target} (connection refused)" in line and "`maskserve up`" in line, line
    assert "nothere.jpg does not exist" in one_error_line(cli("segment", tmp_path / "nothere.jpg", "--point", "1,1"))


# -- maskserve up ----------------------------------------------------------------------------------------------------

def _free_pair() -> int:
    """A port whose successor is free too (`up` gives the encoder's /metrics the next one)."""
    for _ in range(50):
        port = free_port()
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 1))
                return port
            except OSError:
                continue
    raise RuntimeError("no two free ports in a row")


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("maskserve-"))


class Up:
    """`maskserve up` in a subprocess, its temporary folders in a TMPDIR of its own, run from a scratch folder."""

    def __init__(self, root: Path) -> None:
        self.cwd, self.tmp = root / "cwd", root / "tmp"
        self.cwd.mkdir()
        self.tmp.mkdir()
        self.port, self.http_port, metrics = free_port(), free_port(), _free_pair()
        self.target = f"127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "maskserve.cli", "up", "--port", str(self.port), "--metrics-port", str(metrics),
             "--http-port", str(self.http_port)], cwd=self.cwd, env={**os.environ, "TMPDIR": str(self.tmp)},
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=lambda: self.lines.extend(l.rstrip("\n") for l in self.proc.stderr),
                                       daemon=True)
        self.reader.start()
        deadline, up_since = time.monotonic() + 240, None
        while time.monotonic() < deadline and self.proc.poll() is None:
            if any(l.startswith("Ctrl-C stops the stack") for l in self.lines):
                return
            if up_since is None and any("maskserve is up" in l for l in self.lines):
                up_since = time.monotonic()
            if up_since is not None and time.monotonic() - up_since > 5:
                return  # up, and saying nothing more: the tests say what is missing
            time.sleep(0.1)
        self.stop()
        raise AssertionError("maskserve up did not come up:\n" + "\n".join(self.lines))

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.reader.join(10)
        return self.proc.returncode


@pytest.fixture(scope="module")
def up(tmp_path_factory):
    if shutil.which("redis-server") is None:
        pytest.skip("the local stack starts redis-server")
    stack = Up(tmp_path_factory.mktemp("up"))
    yield stack
    stack.stop()


def test_up_says_what_to_run_next_and_it_works(up):
    text = "\n".join(up.lines)
    assert "maskserve is up" in text and f"annotate in a browser: http://127.0.0.1:{up.http_port}/" in text, text
    (segment,) = [line for line in up.lines if line.startswith("next: ")]
    (python,) = [line for line in up.lines if line.startswith("  or: ")]
    command = shlex.split(segment[len("next: "):].split("   (")[0])
    assert f"--target {up.target}" in segment and "--point 256,140" in segment, segment
    run = subprocess.run(command, cwd=up.cwd, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    for name in ("mask.png", "overlay.png", "summary.json"):
        assert (up.cwd / "out" / name).stat().st_size > 0, name
    run = subprocess.run(shlex.split(python[len("  or: "):]), cwd=up.cwd, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0 and "(3, 512, 512)" in run.stdout, run.stdout + run.stderr


def test_segment_writes_every_mask_and_a_summary(up, tmp_path):
    out, summary_path = tmp_path / "out", tmp_path / "answer.json"
    run = cli("segment", BUNDLED_PHOTO, "--point", "256,140", "--point", "100,400,0", "--box", "150,50,350,250",
              "--all-masks", "--json", summary_path, "--out", out, "--target", up.target)
    assert run.returncode == 0, run.stderr
    summary = json.loads(summary_path.read_text())
    assert not (out / "summary.json").exists()  # --json put it elsewhere
    assert summary["image"] == "astronaut.jpg" and (summary["width"], summary["height"]) == (512, 512)
    assert re.fullmatch(r"[0-9a-f]{32}", summary["image_id"]) and summary["model_version"].startswith("tiny-")
    assert summary["prompt"] == {"points": [[256.0, 140.0, 1], [100.0, 400.0, 0]], "box": [150.0, 50.0, 350.0, 250.0]}
    masks = summary["masks"]
    assert [m["mask"] for m in masks] == [1, 2, 3] and [m["output_index"] for m in masks] == [0, 1, 2]
    best = max(masks, key=lambda m: m["predicted_iou"])
    assert summary["best_mask"] == best["mask"] and [m["best"] for m in masks].count(True) == 1 and best["best"]
    for m in masks:
        pixels = np.asarray(Image.open(out / m["file"])) > 0
        assert m["file"] == f"mask_{m['mask']}.png" and pixels.shape == (512, 512)
        assert m["area"] == int(pixels.sum()) > 0 and 0 <= m["stability_score"] <= 1
        ys, xs = np.nonzero(pixels)
        assert m["bbox_xywh"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
    assert np.array_equal(np.asarray(Image.open(out / "mask.png")), np.asarray(Image.open(out / best["file"])))
    # People count from 1: "mask 2 of 3", never "mask 0".
    assert re.search(rf"\bmask {best['mask']} of 3 is the best\b", run.stdout), run.stdout
    assert len(re.findall(r"^  mask [123] of 3: predicted IoU", run.stdout, re.M)) == 3, run.stdout
    assert not re.search(r"\bmask 0\b", run.stdout)


def test_segment_overlay_shows_the_box_and_the_clicks(up, tmp_path):
    run = cli("segment", BUNDLED_PHOTO, "--box", "150,50,350,250", "--point", "60,300", "--out", tmp_path,
              "--target", up.target)
    assert run.returncode == 0, run.stderr
    overlay = np.asarray(Image.open(tmp_path / "overlay.png").convert("RGB"))
    photo = np.asarray(Image.open(BUNDLED_PHOTO).convert("RGB"))
    for y, x in ((50, 250), (250, 250), (150, 150), (150, 350)):  # the middle of each side of the box
        assert tuple(overlay[y, x]) == BOX_COLOUR, (y, x, overlay[y, x])
    assert tuple(overlay[300, 60]) == FOREGROUND and tuple(photo[300, 60]) != FOREGROUND
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["masks"][summary["best_mask"] - 1]["file"] == "mask.png"  # without --all-masks: the best only
    assert not list(tmp_path.glob("mask_*.png"))


def test_segment_json_to_stdout(up, tmp_path):
    run = cli("segment", BUNDLED_PHOTO, "--point", "256,140", "--json", "-", "--out", tmp_path, "--target", up.target)
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)  # nothing else on stdout
    assert len(summary["masks"]) == 3 and "of 3 is the best" in run.stderr
    assert not (tmp_path / "summary.json").exists()


def test_up_refused_leaves_nothing_behind(up, tmp_path):
    """Here the gRPC port is the running stack's: `up` is refused in one line, again and again, and no empty
    maskserve-* folder piles up in the temporary directory."""
    for _ in range(2):
        run = cli("up", "--port", up.port, "--metrics-port", _free_pair(), "--http-port", free_port(),
                  env={"TMPDIR": str(tmp_path)}, timeout=60)
        assert f"port {up.port} (decoder gRPC) is already in use" in one_error_line(run)
    assert _leftovers(tmp_path) == []


def test_up_stops_on_sigterm_and_removes_its_logs(up):
    """Last of the module's `up` tests: the stack it shares stops cleanly."""
    assert _leftovers(up.tmp), "a running stack keeps its logs in a maskserve-* folder"
    assert up.stop() == 0, "\n".join(up.lines)
    assert _leftovers(up.tmp) == [], "\n".join(up.lines)


@needs_redis
def test_a_stack_that_fails_to_start_names_its_log_in_one_line(tmp_path):
    """A model directory whose decoder cannot load: the start fails, and the one error line quotes the log's
    last line and keeps the folder it names (that, and only that, is left behind)."""
    model = tmp_path / "model"
    model.mkdir()
    (model / "manifest.json").write_text("{}")
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    run = cli("up", "--model-dir", model, "--port", free_port(), "--metrics-port", _free_pair(), "--http-port",
              free_port(), env={"TMPDIR": str(scratch)}, timeout=180)
    line = one_error_line(run)
    (kept,) = _leftovers(scratch)
    assert f"(logs: {scratch / kept})" in line and ".log ends: " in line, line


@pytest.mark.parametrize("command", ["up", "demo"])
def test_a_refused_start_is_one_line_and_leaves_nothing_behind(command, tmp_path):
    """No redis-server on PATH: LocalStack refuses to start, before any process (so before any log)."""
    args = ["--port", free_port(), "--metrics-port", _free_pair(), "--http-port", free_port()] if command == "up" else []
    empty = tmp_path / "bin"
    empty.mkdir()
    run = cli(command, *args, env={"TMPDIR": str(tmp_path), "PATH": str(empty)}, cwd=tmp_path)
    assert "redis-server is not installed" in one_error_line(run)
    assert _leftovers(tmp_path) == []


def test_up_with_a_missing_model_dir_is_one_line(tmp_path):
    line = one_error_line(cli("up", "--model-dir", tmp_path / "nope", "--port", free_port(), "--metrics-port",
                              _free_pair(), "--http-port", free_port(), env={"TMPDIR": str(tmp_path)}))
    assert "nope: no such directory" in line and _leftovers(tmp_path) == []
