"""The `maskserve` command line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape

from maskserve.limits import MAX_POINTS

app = typer.Typer(help="Segment Anything as a service.", no_args_is_help=True, add_completion=False)
models_app = typer.Typer(help="Published SAM checkpoints.", no_args_is_help=True)
app.add_typer(models_app, name="models")
keys_app = typer.Typer(help="API keys for the access file (MASKSERVE_AUTH_FILE).", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
web_app = typer.Typer(help="The web annotator's in-browser runtime (ONNX Runtime Web).", no_args_is_help=True)
app.add_typer(web_app, name="web")
console = Console(stderr=True, soft_wrap=True)


def _fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {escape(message)}")
    raise typer.Exit(2)


@models_app.command("list")
def models_list() -> None:
    """Model types, their checkpoints and sizes."""
    from maskserve.build.specs import MODEL_SPECS

    for name, spec in MODEL_SPECS.items():
        source = spec.checkpoint_url or "trained in this repository (ships with maskserve)"
        print(f"{name:6} {spec.encoder_depth:2} blocks × {spec.encoder_embed_dim:4}  {source}")


@models_app.command("pull")
def models_pull(
    model_type: str = typer.Argument(..., help="vit_b, vit_l, vit_h, or SAM 2.1: sam2.1_hiera_tiny, _small, _base_plus, _large"),
    cache_dir: Optional[Path] = typer.Option(None, help="Where checkpoints are kept (default ~/.cache/maskserve/checkpoints, or $MASKSERVE_CACHE/checkpoints)."),
    base_url: Optional[str] = typer.Option(None, envvar="MASKSERVE_CHECKPOINT_URL", help="A mirror of Meta's checkpoint folder."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Download a published checkpoint, verifying size and md5 (SAM) or sha256 (SAM 2.1); an interrupted download resumes."""
    from maskserve.build.download import DownloadError, pull
    from maskserve.build.specs import UnknownModelType

    try:
        path = pull(model_type, cache_dir, base_url, progress=not quiet)
    except (DownloadError, UnknownModelType) as exc:
        _fail(str(exc))
    print(path)


@web_app.command("pull")
def web_pull(
    registry: Optional[str] = typer.Option(None, help="An npm registry mirror (default $npm_config_registry, else "
                                                      "registry.npmjs.org)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Download ONNX Runtime Web (15 MB, checksum verified) for the web annotator's hover preview, into
    $MASKSERVE_CACHE/web (default ~/.cache/maskserve/web); the decoder serves it from there."""
    from maskserve.build.download import DownloadError, pull_web_runtime

    try:
        print(pull_web_runtime(registry=registry, progress=not quiet))
    except DownloadError as exc:
        _fail(str(exc))


@app.command()
def build(
    out: Path = typer.Option(..., help="The model directory to write."),
    model_type: str = typer.Option("vit_b", help="vit_b, vit_l, vit_h or tiny; SAM 2.1: sam2.1_hiera_tiny, _small, _base_plus or _large."),
    checkpoint: Optional[Path] = typer.Option(None, help="A checkpoint in Meta's format; default: pull the published one."),
    backend: str = typer.Option("onnxruntime", help="onnxruntime (CPU), tensorrt (NVIDIA GPU) or torch (PyTorch encoder: CUDA, else CPU)."),
    precision: str = typer.Option("fp32", help="fp32; fp16 for TensorRT; bf16 or fp16 for torch."),
    max_encoder_batch: int = typer.Option(8, help="TensorRT, torch: largest encoder batch (one run)."),
    max_decoder_batch: int = typer.Option(64, help="TensorRT: largest batch of prompts."),
    max_points: int = typer.Option(MAX_POINTS, help="TensorRT: most points (boxes count two) in one prompt."),
) -> None:
    """Turn a SAM or SAM 2.1 checkpoint into a model directory (encoder, decoder, manifest)."""
    from maskserve.build.builder import build_model_dir
    from maskserve.build.checkpoint import CheckpointError
    from maskserve.build.download import DownloadError, pull
    from maskserve.build.specs import UnknownModelType

    try:
        if checkpoint is None:
            checkpoint = pull(model_type)
        manifest = build_model_dir(checkpoint, model_type, out, backend, precision,
                                   max_encoder_batch, max_decoder_batch, max_points)
    except (CheckpointError, DownloadError, UnknownModelType, ValueError, RuntimeError) as exc:
        _fail(str(exc))
    console.print(f"[green]built[/] {out}: {manifest.model_type} {manifest.backend} {manifest.precision}, "
                  f"model version {manifest.model_version}")


@app.command()
def compile(
    model_dir: Path = typer.Option(..., help="An ONNX Runtime model directory made by `maskserve build`."),
    out: Optional[Path] = typer.Option(None, help="Write the TensorRT model directory here..."),
    cache: Optional[Path] = typer.Option(None, help="...or into this engine cache, keyed by model version, GPU "
                                                    "architecture and TensorRT version (skipped if already there)."),
    precision: str = typer.Option("fp16", help="fp16 or fp32."),
    max_encoder_batch: int = typer.Option(8), max_decoder_batch: int = typer.Option(64),
    max_points: int = typer.Option(MAX_POINTS),
) -> None:
    """Compile TensorRT engines for this GPU from an exported model (no torch needed: runs in the cluster)."""
    from maskserve.build.tensorrt_engines import compile_model_dir
    from maskserve.engines import engine_dir

    if (out is None) == (cache is None):
        _fail("give exactly one of --out and --cache")
    try:
        target = out or engine_dir(cache, model_dir)
        if cache is not None and (target / "manifest.json").is_file():
            console.print(f"engines for this GPU already in {target}")
            return
        m = compile_model_dir(model_dir, target, precision, max_encoder_batch=max_encoder_batch,
                              max_decoder_batch=max_decoder_batch, max_points=max_points)
    except (ValueError, RuntimeError) as exc:
        _fail(str(exc))
    console.print(f"[green]compiled[/] {target}: {m.model_type} TensorRT {m.backend_version} {m.precision}")


def _settings(**overrides):
    from maskserve.service.config import Settings

    try:
        return Settings.from_env(**overrides)
    except ValueError as exc:  # names the variable
        _fail(str(exc))


@app.command()
def settings() -> None:
    """Every MASKSERVE_* setting with its default and meaning (the README's configuration table)."""
    from maskserve.service.config import table

    print(table())


RedisOpt = typer.Option(None, "--redis-url", help="[env MASKSERVE_REDIS_URL]")
ModelOpt = typer.Option(None, "--model-dir", help="Model directory; default the shipped tiny model. [env MASKSERVE_MODEL_DIR]")
MetricsOpt = typer.Option(None, "--metrics-port", help="Port of /metrics, 0 for none. [env MASKSERVE_METRICS_PORT]")


@app.command()
def encoder(redis_url: Optional[str] = RedisOpt, model_dir: Optional[str] = ModelOpt,
            metrics_port: Optional[int] = MetricsOpt) -> None:
    """Run an encoder worker: images from the Redis job stream → embeddings in Redis."""
    from maskserve.service import encoder_worker

    encoder_worker.main(_settings(redis_url=redis_url, model_dir=model_dir, metrics_port=metrics_port))


@app.command()
def decoder(redis_url: Optional[str] = RedisOpt, model_dir: Optional[str] = ModelOpt,
            port: Optional[int] = typer.Option(None, "--port", help="gRPC port. [env MASKSERVE_GRPC_PORT]"),
            metrics_port: Optional[int] = MetricsOpt) -> None:
    """Run the decoder service (gRPC): prompts answered from the embedding store."""
    from maskserve.service import decoder_server

    decoder_server.main(_settings(redis_url=redis_url, model_dir=model_dir, grpc_port=port, metrics_port=metrics_port))


@app.command()
def up(redis_url: Optional[str] = typer.Option(None, help="Use this Redis instead of starting one."),
       model_dir: str = typer.Option("", help="Model directory; default the shipped tiny model."),
       port: int = typer.Option(50051, help="gRPC port of the decoder."),
       metrics_port: int = typer.Option(9090, help="Decoder /metrics port; the encoder's is the next one."),
       http_port: int = typer.Option(8080, help="HTTP/JSON API and the web annotator."),
       host: str = typer.Option("127.0.0.1", help="Address gRPC, HTTP and /metrics listen on (0.0.0.0: every "
                                                  "interface).")) -> None:
    """Start a local stack on this machine (Redis, one encoder, one decoder) until Ctrl-C."""
    import signal as _signal
    import time as _time

    from maskserve.service.stack import LocalStack

    stack = LocalStack(model_dir, redis_url, port, (metrics_port, metrics_port + 1), host=host, http_port=http_port)
    try:  # the annotator's in-browser decoder, once (the page works without it, minus the hover preview)
        from maskserve.build.download import DownloadError, pull_web_runtime

        pull_web_runtime(progress=False)
    except (DownloadError, OSError) as exc:
        console.print(f"[yellow]no ONNX Runtime Web ({exc}); the annotator works without its hover preview; "
                      "`maskserve web pull` to add it")
    try:
        stack.__enter__()
    except RuntimeError as exc:
        _fail(str(exc))
    try:
        console.print(f"[green]maskserve is up[/]  gRPC {host}:{port}  HTTP http://{host}:{http_port}  metrics "
                      f":{metrics_port} (decoder) :{metrics_port + 1} (encoder)  redis {stack.redis_url}  logs "
                      f"{stack.log_dir}")
        console.print(f"annotate in a browser: http://{host}:{http_port}/   API: http://{host}:{http_port}/openapi.json")
        stopping = []
        _signal.signal(_signal.SIGTERM, lambda *_: stopping.append(1))
        while not stopping:
            _time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        stack.__exit__(None, None, None)


@keys_app.command("new")
def keys_new(tenant: str = typer.Option(..., help="The tenant the key acts for."),
             name: Optional[str] = typer.Option(None, help="A name for logs (default: TENANT-key)."),
             rpc: list[str] = typer.Option([], help="An RPC the key may call (repeatable); default all.")) -> None:
    """A new API key (printed once, on stderr) and its access-file entry (stdout, JSON): only the hash is kept."""
    from maskserve.service import access

    if not access.TENANT_NAME.match(tenant):
        _fail(f"tenant name {tenant!r}: lower-case letters, digits, '_', '.', '-' (at most 63)")
    unknown = set(rpc) - {"*", *access.RPCS}
    if unknown:
        _fail(f"unknown --rpc {', '.join(sorted(unknown))}; known: {', '.join(access.RPCS)}")
    key = access.new_key()
    console.print(f"API key (shown once; give it to the client, keep only the entry below): {key}")
    print(json.dumps({"name": name or f"{tenant}-key", "tenant": tenant, "sha256": access.key_hash(key),
                      "rpcs": rpc or ["*"]}))


# How a client command reaches a service with TLS and authentication on.
ApiKeyOpt = typer.Option(None, "--api-key", envvar="MASKSERVE_API_KEY", help="Sent as `authorization: Bearer`.")
TlsCaOpt = typer.Option(None, "--tls-ca", help="Speak TLS, trusting this CA (PEM); --tls for the system's CAs.")
TlsOpt = typer.Option(False, "--tls", help="Speak TLS, trusting the system's CAs.")
TlsCertOpt = typer.Option(None, "--tls-cert", help="Client certificate (PEM), for mutual TLS.")
TlsKeyOpt = typer.Option(None, "--tls-key", help="Its private key (PEM).")


def _client_options(api_key, use_tls, tls_ca, tls_cert, tls_key) -> dict:
    def read(path):
        try:
            return Path(path).read_bytes() if path else None
        except OSError as exc:
            _fail(f"{path}: {exc.strerror}")
    if bool(tls_cert) != bool(tls_key):
        _fail("--tls-cert and --tls-key go together")
    return {"api_key": api_key, "tls": True if (use_tls or tls_ca or tls_cert) else None,
            "root_certificates": read(tls_ca), "certificate_chain": read(tls_cert), "private_key": read(tls_key)}


@app.command()
def segment(image: Path = typer.Argument(..., help="A JPEG, PNG or WebP file."),
            point: list[str] = typer.Option([], help="X,Y of a foreground click (repeatable); X,Y,0 for background."),
            box: Optional[str] = typer.Option(None, help="X0,Y0,X1,Y1"),
            target: str = typer.Option("127.0.0.1:50051", help="The decoder service."),
            out: Path = typer.Option(Path("out"), help="Folder for mask.png and overlay.png."),
            api_key: Optional[str] = ApiKeyOpt, tls: bool = TlsOpt, tls_ca: Optional[Path] = TlsCaOpt,
            tls_cert: Optional[Path] = TlsCertOpt, tls_key: Optional[Path] = TlsKeyOpt) -> None:
    """Segment an image through a running service; writes the best mask and an overlay."""
    import grpc

    from maskserve.service.segment_file import segment_file

    points = [_numbers(p, "--point", (2, 3)) for p in point]
    for p in points:
        if len(p) == 3 and p[2] not in (0.0, 1.0):
            _fail(f"--point {','.join(f'{v:g}' for v in p)}: the label is 1 (foreground) or 0 (background)")
    try:
        summary = segment_file(target, image, points, _numbers(box, "--box", (4,)) if box else None, out,
                               **_client_options(api_key, tls, tls_ca, tls_cert, tls_key))
    except ValueError as exc:
        _fail(str(exc))
    except grpc.RpcError as exc:
        _fail_rpc(exc, target)
    print(summary)


_SHAPES = {2: "X,Y", 3: "X,Y,LABEL", 4: "X0,Y0,X1,Y1"}


def _numbers(text: str, what: str, counts: tuple[int, ...]) -> list[float]:
    """`--point 1,2`-style numbers, or one error line naming the flag and the shape it takes."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) not in counts:
        _fail(f"{what} {text!r}: expected {' or '.join(_SHAPES[n] for n in counts)}")
    return values


def _fail_rpc(exc, target: str) -> None:
    """One line for a failed call; how to start a service when none answers."""
    import grpc

    hint = (f" (is a service running at {target}? Start one with `maskserve up`)"
            if exc.code() == grpc.StatusCode.UNAVAILABLE else "")
    _fail(f"{exc.code().name}: {exc.details()}{hint}")


def segment_everything(
    image: Path = typer.Argument(..., help="A JPEG, PNG or WebP file."),
    target: str = typer.Option("127.0.0.1:50051", help="The decoder service."),
    in_process: bool = typer.Option(False, "--in-process", help="Run here on --model-dir instead of the service."),
    model_dir: Optional[Path] = typer.Option(None, help="With --in-process: a model directory (default the tiny model)."),
    out: Path = typer.Option(Path("out"), help="Folder for IMAGE.json and IMAGE_overlay.png."),
    api_key: Optional[str] = ApiKeyOpt, tls: bool = TlsOpt, tls_ca: Optional[Path] = TlsCaOpt,
    tls_cert: Optional[Path] = TlsCertOpt, tls_key: Optional[Path] = TlsKeyOpt,
    **options,
) -> None:
    """Every object in an image (the paper's automatic mode) → COCO-style JSON with SA-1B's fields and an
    overlay PNG with one colour per mask."""
    import grpc
    from rich.progress import Progress

    from maskserve.engines.automatic import Options, ParameterError
    from maskserve.service.segment_file import segment_everything_file

    try:
        options = Options(**options).validate(max_crop_layers=8, max_points=2**24)
    except ParameterError as exc:
        _fail(str(exc))
    with Progress(console=console, transient=True) as bar:
        tasks: dict[str, int] = {}

        def progress(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total)
            bar.update(tasks[stage], completed=done, total=total)

        try:
            summary = segment_everything_file(image, out, options, target=None if in_process else target,
                                              model_dir=str(model_dir) if model_dir else None, progress=progress,
                                              **_client_options(api_key, tls, tls_ca, tls_cert, tls_key))
        except ValueError as exc:
            _fail(str(exc))
        except grpc.RpcError as exc:
            _fail_rpc(exc, target)
    print(summary)


def _with_generator_options(command):
    """The command's signature with a flag per generator parameter (automatic.Options declares them once)."""
    import dataclasses
    import inspect
    import typing

    from maskserve.engines.automatic import Options

    hints = typing.get_type_hints(Options)
    params = [p for p in inspect.signature(command).parameters.values() if p.kind != p.VAR_KEYWORD]
    for f in dataclasses.fields(Options):
        if not f.metadata["cli"]:
            continue
        kind = next(t for t in typing.get_args(hints[f.name]) or (hints[f.name],) if t is not type(None))
        default, help = Options.describe(f.name)
        flag = (f.metadata["flag"],) if f.metadata["flag"] else ()
        option = typer.Option(f.default, *flag, help=f"{help}.", show_default=default if f.default is None else True)
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=option,
                                        annotation=Optional[kind] if f.default is None else kind))
    command.__signature__ = inspect.Signature(params)
    return command


app.command("segment-everything")(_with_generator_options(segment_everything))


@app.command()
def track(video: Path = typer.Argument(..., help="A video file (what OpenCV reads: .mp4, .avi, .mov, ...) or a folder "
                                                 "of frames (JPEG, PNG, WebP or BMP, in name order)."),
          point: list[str] = typer.Option([], help="X,Y of a click on the first frame: one object per --point "
                                                   "(repeatable); objects are numbered 1, 2, ... points first."),
          box: list[str] = typer.Option([], help="X0,Y0,X1,Y1 on the first frame: one object per --box "
                                                 "(repeatable), numbered after the points."),
          out: Optional[str] = typer.Option(None, help="An .mp4 or .avi overlay video, or a folder (an existing one, "
                                                       "a path ending in / or one without a suffix) for PNG frames "
                                                       "00000.png, ...; default VIDEO_tracked.mp4 in this directory."),
          model_dir: Optional[Path] = typer.Option(None, help="Track in this process on this SAM 2.1 model directory "
                                                              "(default the shipped tiny model: a SAM model, which "
                                                              "cannot track)."),
          target: Optional[str] = typer.Option(None, help="Track through the service at HOST:PORT instead."),
          max_frames: Optional[int] = typer.Option(None, min=1, help="Stop after N frames."),
          quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
          api_key: Optional[str] = ApiKeyOpt, tls: bool = TlsOpt, tls_ca: Optional[Path] = TlsCaOpt,
          tls_cert: Optional[Path] = TlsCertOpt, tls_key: Optional[Path] = TlsKeyOpt) -> None:
    """Track objects prompted on a video's first frame through the video (SAM 2.1): an overlay video or PNG
    frames, each object's mask and outline in its own colour."""
    import os
    import time

    import grpc
    from rich.progress import MofNCompleteColumn, Progress

    from maskserve.video import VideoTracker, count_frames, read_frames

    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # FFmpeg's own lines (quiet); errors come as one line
    if not point and not box:
        _fail("give at least one --point X,Y or --box X0,Y0,X1,Y1 (each is one object on the first frame)")
    if model_dir is not None and target is not None:
        _fail("give --model-dir (track in this process) or --target (through a service), not both")
    prompts = [{"points": [_numbers(p, "--point", (2,))], "labels": [1]} for p in point]
    for b in box:
        x0, y0, x1, y1 = _numbers(b, "--box", (4,))
        if x1 <= x0 or y1 <= y0:
            _fail(f"--box {b!r}: X1 must be greater than X0 and Y1 greater than Y0")
        prompts.append({"box": [x0, y0, x1, y1]})
    kind, out_path = _track_output(out, video)
    if not video.exists():
        _fail(f"{video} does not exist")
    frames = read_frames(video)
    try:
        first = next(frames, None)
    except (ValueError, OSError) as exc:
        _fail(str(exc))
    if first is None:
        _fail(f"{video}: no frames")
    length = count_frames(video)
    exact = length if video.is_dir() and length and length >= 2 else None  # a container's count is a guess
    total = min(length, max_frames) if length and max_frames else (length or max_frames)

    try:
        if target is not None:
            from maskserve.client import Client

            tracker = VideoTracker(Client(target, **_client_options(api_key, tls, tls_ca, tls_cert, tls_key)),
                                   expected_frames=exact)
        else:
            tracker = VideoTracker(str(model_dir) if model_dir else None, expected_frames=exact)
    except ValueError as exc:  # not a model directory, or a model that cannot track
        _fail(f"{exc}" + ("" if model_dir else " (no --model-dir: the shipped tiny SAM model; give --model-dir a "
                                               "SAM 2.1 model directory, or --target a service)"))
    except grpc.RpcError as exc:
        _fail_rpc(exc, target or "")

    sink, n, started = None, 0, time.perf_counter()
    try:
        with tracker, Progress(*Progress.get_default_columns(), MofNCompleteColumn(), console=console,
                               transient=True, disable=quiet) as bar:
            task = bar.add_task("tracking", total=total)
            tracker.track(first)
            for obj_id, prompt in enumerate(prompts, 1):
                _, ids, masks = tracker.add_new_points_or_box(obj_id, **prompt)
            sink = _TrackOutput(kind, out_path, first.shape[:2], _video_fps(video))
            sink.write(_draw_objects(first, ids, masks, prompts))
            n = 1
            bar.advance(task)
            for frame in frames:
                if max_frames is not None and n >= max_frames:
                    break
                _, ids, masks = tracker.track(frame)
                sink.write(_draw_objects(frame, ids, masks))
                n += 1
                bar.advance(task)
    except (ValueError, OSError) as exc:
        _fail(str(exc))
    except grpc.RpcError as exc:
        _fail_rpc(exc, target or "")
    finally:
        if sink is not None:
            sink.close()
    seconds = time.perf_counter() - started
    where = out_path if kind == "video" else f"{out_path} (PNG frames 00000.png to {n - 1:05d}.png)"
    print(f"{video.name}: {n} frame{'s' * (n != 1)} tracked, {len(prompts)} object{'s' * (len(prompts) != 1)}, "
          f"{seconds:.1f} s ({n / seconds:.1f} frames/s) → {where}")


# One colour per tracked object id (RGB), in order: 1 is the `segment` overlay's blue.
_PALETTE = ((30, 144, 255), (255, 99, 71), (50, 205, 50), (255, 215, 0), (186, 85, 211), (0, 206, 209),
            (255, 140, 0), (255, 105, 180), (154, 205, 50), (100, 149, 237))


def _track_output(out: Optional[str], video: Path) -> tuple[str, Path]:
    """("video", file) or ("frames", folder) for `track --out`."""
    import os

    if out is None:
        name = video.resolve().name if video.is_dir() else video.stem
        return "video", Path(f"{name}_tracked.mp4")
    path = Path(out)
    if out.endswith(("/", os.sep)) or path.is_dir() or not path.suffix:
        return "frames", path
    if path.suffix.lower() in (".mp4", ".avi"):
        return "video", path
    _fail(f"--out {out}: an .mp4 or .avi file (the overlay video) or a folder (PNG frames)")


def _video_fps(video: Path) -> float:
    """The input's frame rate when it is a video file OpenCV knows it of; else 10."""
    if video.is_dir():
        return 10.0
    import cv2

    capture = cv2.VideoCapture(str(video))
    fps = capture.get(cv2.CAP_PROP_FPS)
    capture.release()
    return fps if fps and fps > 0 else 10.0


def _draw_objects(rgb, obj_ids, masks, prompts=()):
    """Each object's mask blended at half opacity in its palette colour, its outline drawn over it; the first
    frame also shows the prompts (clicks as dots, boxes as rectangles)."""
    import cv2
    import numpy as np

    out = rgb.astype(np.float32)
    colours = {i: _PALETTE[(i - 1) % len(_PALETTE)] for i in obj_ids}
    for i, mask in zip(obj_ids, masks):
        out[mask] = 0.5 * out[mask] + 0.5 * np.array(colours[i], np.float32)
    out = np.ascontiguousarray(out.astype(np.uint8))
    for i, mask in zip(obj_ids, masks):
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, colours[i], 2)
    for i, prompt in enumerate(prompts, 1):
        colour = _PALETTE[(i - 1) % len(_PALETTE)]
        for x, y in prompt.get("points", ()):
            cv2.circle(out, (int(round(x)), int(round(y))), 4, (255, 255, 255), -1)
            cv2.circle(out, (int(round(x)), int(round(y))), 3, colour, -1)
        if "box" in prompt:
            x0, y0, x1, y1 = (int(round(v)) for v in prompt["box"])
            cv2.rectangle(out, (x0, y0), (x1, y1), colour, 1)
    return out


class _TrackOutput:
    """`track`'s frames, written as they come: an mp4v video (OpenCV) or a folder of PNGs."""

    def __init__(self, kind: str, path: Path, size: tuple[int, int], fps: float) -> None:
        import cv2

        self.kind, self.path, self.count, self.writer = kind, path, 0, None
        if kind == "video":
            path.parent.mkdir(parents=True, exist_ok=True)
            self.writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (size[1], size[0]))
            if not self.writer.isOpened():
                raise OSError(f"{path}: OpenCV cannot write this video (codec mp4v)")
        else:
            path.mkdir(parents=True, exist_ok=True)

    def write(self, rgb) -> None:
        import cv2

        bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
        if self.writer is not None:
            self.writer.write(bgr)
        else:
            name = self.path / f"{self.count:05d}.png"
            if not cv2.imwrite(str(name), bgr):
                raise OSError(f"{name}: cannot write")
        self.count += 1

    def close(self) -> None:
        if self.writer is not None:
            self.writer.release()


@app.command()
def demo(out: Path = typer.Option(Path("out"), help="Folder for the results.")) -> None:
    """Start the local stack, segment the bundled photo through it, write mask and overlay PNGs, stop."""
    from maskserve.service.segment_file import BUNDLED_PHOTO, segment_file
    from maskserve.service.stack import LocalStack, free_port

    with LocalStack(grpc_port=free_port()) as stack:
        console.print(f"[green]local stack up[/] at {stack.target} (redis {stack.redis_url})")
        print(segment_file(stack.target, BUNDLED_PHOTO, [(256.0, 140.0)], None, out))


@app.command()
def bench(model_dir: Optional[Path] = typer.Option(None, help="Model directory; default the shipped tiny model."),
          checkpoint: Optional[Path] = typer.Option(None, help="The same weights for the reference SamPredictor "
                                                                "(default: the tiny model's checkpoint)."),
          model_type: Optional[str] = typer.Option(None),
          requests: int = typer.Option(200), clients: int = typer.Option(4),
          rate: float = typer.Option(10.0, help="Open-loop request rate."), seconds: float = typer.Option(10.0),
          encode_images: int = typer.Option(8),
          everything_reps: int = typer.Option(3, help="SegmentEverything runs against the reference generator "
                                                      "per setting (0: skip)."),
          sam2_model_dir: Optional[Path] = typer.Option(None, help="Also a SAM 2.1 model directory, against the "
                                                                   "official SAM2ImagePredictor (and its video "
                                                                   "tracking against SAM2VideoPredictor)."),
          sam2_checkpoint: Optional[Path] = typer.Option(None, help="Its weights, in Meta's format."),
          out: Path = typer.Option(Path("bench"))) -> None:
    """Benchmark the real stack against the reference in the same run → bench.json, bench.png."""
    from maskserve import bench as bench_lib
    from maskserve.engines import default_model_dir

    if checkpoint is None and model_dir is None:
        checkpoint = default_model_dir().parent / "sam_tiny.pth"
    if (sam2_model_dir is None) != (sam2_checkpoint is None):
        _fail("--sam2-model-dir and --sam2-checkpoint go together (the reference needs the same weights)")
    result = bench_lib.run(model_dir, checkpoint, model_type, requests, clients, rate, seconds, encode_images, out,
                           everything_reps=everything_reps, sam2_model_dir=sam2_model_dir,
                           sam2_checkpoint=sam2_checkpoint)
    print(json.dumps({"ratios": result.get("ratios"), "decoder": result["decoder"],
                      "everything": result.get("everything"),
                      "sam2.1": result.get("sam2.1", {}).get("ratios"),
                      "tracking": result.get("tracking", {}).get("ratios")}, indent=2))
    console.print(f"wrote {out / 'bench.json'} and {out / 'bench.png'}")


@app.command()
def soak(seconds: float = typer.Option(300, help="How long (the documented long form: 1800)."),
         rate: float = typer.Option(20, help="Requests per second, open loop."),
         new_image_every: int = typer.Option(10, help="Every Nth request encodes a new distinct image."),
         window: float = typer.Option(60, help="Seconds per reported window."),
         model_dir: str = typer.Option("", help="Model directory; default the shipped tiny model."),
         out: Path = typer.Option(Path("out/soak"))) -> None:
    """A local stack under a fixed request rate (loopback only): latency, errors, memory and the decoder's
    bookkeeping per window → soak.json."""
    from maskserve import soak as soak_lib

    print(soak_lib.report(soak_lib.run(seconds, rate, new_image_every, window, model_dir,
                                      progress=lambda line: print(line, flush=True)), out))


@app.command("soak-track")
def soak_track(model_dir: Path = typer.Option(..., help="A SAM 2.1 model directory."),
               frames: int = typer.Option(2000, min=2, help="Frames to track (the CI form: 24)."),
               objects: int = typer.Option(2, min=1), window: int = typer.Option(100, min=1),
               out: Path = typer.Option(Path("out/soak-track"))) -> None:
    """One tracking session through many frames, in this process: its state and RSS per window → soak.json."""
    from maskserve import soak as soak_lib

    try:
        result = soak_lib.track(str(model_dir), frames, objects, window, progress=lambda line: print(line, flush=True))
    except ValueError as exc:
        _fail(str(exc))
    out.mkdir(parents=True, exist_ok=True)
    (out / "soak.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"{frames} frames, {objects} objects, {result['seconds']} s: state constant after the memory window: "
          f"{result['flat']['state_bytes_constant']}; RSS growth over the second half "
          f"{result['flat']['rss_growth_second_half_mb']:+.1f} MB")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
