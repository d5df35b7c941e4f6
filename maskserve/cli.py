"""The `maskserve` command line."""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import re
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

from maskserve.limits import MAX_POINTS

# Usage errors' base: click's, or the copy of click that newer typer carries (not exported by either name).
_ClickException = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")
console = Console(stderr=True, soft_wrap=True)


# -- help and usage errors as a newcomer reads them -------------------------------------------------------------------
# typer prints Python's type names (`<bool>` even for flags, `<list[str]>`), wraps a docstring where the source
# does and reads `[...]` in help as markup; these classes, given to every command, print words instead.

_TYPE_WORDS = {"int": "N", "float": "NUMBER", "str": "TEXT", "path": "PATH"}


def _prose(text: str | None) -> str | None:
    """A docstring's paragraphs as one line each (the terminal wraps them), markup characters shown as typed."""
    if not text:
        return text
    paragraphs = inspect.cleandoc(text).split("\n\n")
    return escape("\n\n".join(" ".join(line.strip() for line in p.splitlines()) for p in paragraphs))


def _number(value: float) -> str:
    return f"{value:g}"


class _Option(TyperOption):
    def display_type_rich(self, ctx):
        if self.is_flag or self.count:
            return None  # a flag takes no value: nothing to show
        if self.metavar is not None:
            return self.metavar
        label = (super().display_type_rich(ctx) or "").strip("<>")
        label = re.sub(r"^list\[(\w+)\]$|^(\w+) range$", r"\1\2", label)
        return _TYPE_WORDS.get(label, label.upper())

    def _get_number_range_help_str(self):
        low, high = self.min, self.max
        if low is not None and high is not None:
            return f"{_number(low)} to {_number(high)}"
        return f"at least {_number(low)}" if low is not None else f"at most {_number(high)}" if high is not None \
            else None

    def _get_default_string(self, *, ctx, show_default_is_str, default_value):
        if show_default_is_str:  # as the option wrote it ("512 / 1500"), not wrapped in parentheses
            return str(self.show_default)
        if isinstance(default_value, float):
            return _number(default_value)
        return super()._get_default_string(ctx=ctx, show_default_is_str=show_default_is_str,
                                           default_value=default_value)


class _Argument(TyperArgument):
    def display_type_rich(self, ctx):
        return None  # its name (IMAGE, VIDEO) and help say what it is

    def _usage_display_name(self) -> str:
        name = self.display_name_raw
        return (name if self.required else f"[{name}]") + ("..." if self.nargs != 1 else "")


def _readable(param) -> None:
    if getattr(param, "_readable", False):
        return
    param._readable = True
    if type(param) is TyperOption:
        param.__class__ = _Option
    elif type(param) is TyperArgument:
        param.__class__ = _Argument
        if param.metavar is None:
            param.metavar = param.name.upper()
    if getattr(param, "help", None):
        param.help = escape(param.help)


class _Readable:
    def _make_readable(self) -> None:
        self.help, self.short_help = _prose(self.help), _prose(self.short_help)
        for param in self.params:
            _readable(param)

    def get_help_option(self, ctx):
        option = super().get_help_option(ctx)
        if option is not None:
            _readable(option)
        return option


class _Command(_Readable, TyperCommand):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._make_readable()


class _Group(_Readable, TyperGroup):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._make_readable()

    def main(self, *args, standalone_mode: bool = True, **kwargs):
        """Usage errors as one line, like the commands' own errors (typer draws a box with the usage above)."""
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except _ClickException as exc:
            if type(exc).__name__ != "NoArgsIsHelpError":  # that one has printed the help already
                _usage_error(exc)
            sys.exit(exc.exit_code)
        except typer.Abort:
            console.print("aborted")
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


def _usage_error(exc) -> None:
    message = exc.format_message()
    extra = re.search(r"unexpected extra arguments?(?:\(s\))? \((.*)\)", message)
    if extra and all(re.fullmatch(r"-?[\d.,]+", v) for v in extra.group(1).split()):
        message += ": numbers of one point or box go together, comma-separated, without spaces (--point 250,200)"
    ctx = getattr(exc, "ctx", None)
    where = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
    console.print(f"[bold red]error:[/] {escape(message + where)}")


class _Typer(typer.Typer):
    """A Typer whose groups and commands all get the readable help (typer takes the class per command)."""

    def __init__(self, **kwargs) -> None:
        super().__init__(cls=_Group, **kwargs)

    def command(self, name: str | None = None, *, cls=None, **kwargs):
        return super().command(name, cls=cls or _Command, **kwargs)


app = _Typer(help="Segment Anything as a service.", no_args_is_help=True, add_completion=False)
models_app = _Typer(help="Published SAM checkpoints.", no_args_is_help=True)
app.add_typer(models_app, name="models")
keys_app = _Typer(help="API keys for the access file (MASKSERVE_AUTH_FILE).", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
web_app = _Typer(help="The web annotator's in-browser runtime (ONNX Runtime Web).", no_args_is_help=True)
app.add_typer(web_app, name="web")


def _version(value: bool) -> None:
    if not value:
        return
    from maskserve import __version__
    from maskserve.v1 import maskserve_pb2

    print(f"maskserve {__version__} (API {maskserve_pb2.DESCRIPTOR.package}, Python "
          f"{sys.version_info.major}.{sys.version_info.minor})")
    raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", is_eager=True, callback=_version,
                                       help="Print the version (package, gRPC API) and exit.")) -> None:
    """Segment Anything as a service."""


def _fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {escape(message)}")
    raise typer.Exit(2)


@models_app.command("list")
def models_list() -> None:
    """Model types, their families, checkpoints and sizes."""
    from maskserve.build.specs import ALIASES, ALL_SPECS

    aliases = {v: k for k, v in ALIASES.items()}
    for name, spec in ALL_SPECS.items():
        source = spec.checkpoint_url or "trained in this repository (ships with maskserve)"
        size = f"{spec.checkpoint_bytes / 1e6:6.0f} MB" if spec.checkpoint_bytes else " " * 9
        also = f" (also: {aliases[name]})" if name in aliases else ""
        print(f"{name + also:24} {spec.family:10} {size}  {source}")


@models_app.command("pull")
def models_pull(
    model_type: str = typer.Argument(..., help="vit_b, vit_l, vit_h; MobileSAM: mobile_sam (= vit_t); SAM 2.1: "
                                    "sam2.1_hiera_tiny, _small, _base_plus, _large; SAM 3: sam3 (gated: $HF_TOKEN) "
                                    "(`maskserve models list`)"),
    cache_dir: Optional[Path] = typer.Option(None, metavar="DIR", help="Where checkpoints are kept (default "
                                             "~/.cache/maskserve/checkpoints, or $MASKSERVE_CACHE/checkpoints)."),
    base_url: Optional[str] = typer.Option(None, envvar="MASKSERVE_CHECKPOINT_URL", metavar="URL",
                                           help="A mirror of the publisher's checkpoint folder."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Download a published checkpoint, verifying its size and digest (SAM: md5; SAM 2.1 and 3: sha256; MobileSAM:
    its git object id); an interrupted download resumes. SAM 3's is gated: $HF_TOKEN, of a Hugging Face account
    that has accepted the SAM License, goes with the request."""
    from maskserve.build.download import DownloadError, pull
    from maskserve.build.specs import UnknownModelType

    try:
        path = pull(model_type, cache_dir, base_url, progress=not quiet)
    except (DownloadError, UnknownModelType) as exc:
        _fail(str(exc))
    print(path)


@web_app.command("pull")
def web_pull(
    registry: Optional[str] = typer.Option(None, metavar="URL",
                                           help="An npm registry mirror (default $npm_config_registry, else "
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
    out: Path = typer.Option(..., metavar="DIR", help="The model directory to write."),
    model_type: str = typer.Option("vit_b", metavar="TYPE", help="vit_b, vit_l, vit_h or tiny; MobileSAM: vit_t; "
                                   "SAM 2.1: sam2.1_hiera_tiny, _small, _base_plus or _large."),
    checkpoint: Optional[Path] = typer.Option(None, metavar="FILE", help="A checkpoint in Meta's format; default: "
                                              "pull the published one."),
    backend: str = typer.Option("onnxruntime", metavar="BACKEND", help="onnxruntime (CPU), tensorrt (NVIDIA GPU) or "
                                "torch (PyTorch encoder: CUDA, else CPU)."),
    precision: str = typer.Option("fp32", metavar="PRECISION", help="fp32; fp16 for TensorRT; bf16 or fp16 for torch."),
    max_encoder_batch: int = typer.Option(8, help="TensorRT, torch: largest encoder batch (one run)."),
    max_decoder_batch: int = typer.Option(64, help="TensorRT: largest batch of prompts."),
    max_points: int = typer.Option(MAX_POINTS, help="TensorRT: most points (boxes count two) in one prompt."),
) -> None:
    """Turn a SAM, MobileSAM or SAM 2.1 checkpoint into a model directory (encoder, decoder, manifest)."""
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
    model_dir: Path = typer.Option(..., metavar="DIR", help="An ONNX Runtime model directory made by "
                                                            "`maskserve build`."),
    out: Optional[Path] = typer.Option(None, metavar="DIR", help="Write the TensorRT model directory here..."),
    cache: Optional[Path] = typer.Option(None, metavar="DIR",
                                         help="...or into this engine cache, keyed by model version, GPU "
                                              "architecture and TensorRT version (skipped if already there)."),
    precision: str = typer.Option("fp16", metavar="PRECISION", help="fp16 or fp32."),
    max_encoder_batch: int = typer.Option(8, help="Largest encoder batch (one run)."),
    max_decoder_batch: int = typer.Option(64, help="Largest batch of prompts."),
    max_points: int = typer.Option(MAX_POINTS, help="Most points (boxes count two) in one prompt."),
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


def _overrides(flag: str, name: str, what: str, metavar: str):
    """An option for one MASKSERVE_* setting, naming it and its default as Settings declares them (once)."""
    from dataclasses import fields

    from maskserve.service.config import Settings

    f = next(f for f in fields(Settings) if f.name == name)
    default = f.metadata["shown"] or f.default
    return typer.Option(None, flag, metavar=metavar, show_default=False,
                        help=f"{what}; overrides MASKSERVE_{name.upper()} (default {default}).")


RedisOpt = _overrides("--redis-url", "redis_url", "Redis holding the embeddings and the job queue", "URL")
ModelOpt = _overrides("--model-dir", "model_dir", "Model directory (`maskserve build` makes one)", "DIR")
MetricsOpt = _overrides("--metrics-port", "metrics_port", "Prometheus /metrics port, 0 for none", "PORT")


@app.command()
def encoder(redis_url: Optional[str] = RedisOpt, model_dir: Optional[str] = ModelOpt,
            metrics_port: Optional[int] = MetricsOpt) -> None:
    """Run an encoder worker: images from the Redis job stream → embeddings in Redis.

    Every other setting is a MASKSERVE_* variable: `maskserve settings` lists them."""
    from maskserve.service import encoder_worker

    encoder_worker.main(_settings(redis_url=redis_url, model_dir=model_dir, metrics_port=metrics_port))


@app.command()
def decoder(redis_url: Optional[str] = RedisOpt, model_dir: Optional[str] = ModelOpt,
            port: Optional[int] = _overrides("--port", "grpc_port", "gRPC port", "PORT"),
            metrics_port: Optional[int] = MetricsOpt) -> None:
    """Run the decoder service (gRPC): prompts answered from the embedding store.

    Every other setting is a MASKSERVE_* variable: `maskserve settings` lists them."""
    from maskserve.service import decoder_server

    decoder_server.main(_settings(redis_url=redis_url, model_dir=model_dir, grpc_port=port, metrics_port=metrics_port))


class _StackDied(Exception):
    """A process of a running local stack failed: its logs are worth keeping and pointing at."""


@contextlib.contextmanager
def _local_stack(**stack_args):
    """A started LocalStack in a log folder this command owns. LocalStack's own temporary folder outlives a
    refused start (a port in use): one more empty /tmp/maskserve-* per try. This one is removed unless a
    process failed and left logs, which the error line then names."""
    import shutil
    import tempfile

    from maskserve.service.stack import LocalStack

    log_dir = Path(tempfile.mkdtemp(prefix="maskserve-"))
    keep = False
    try:
        stack = LocalStack(log_dir=log_dir, **stack_args)
        try:
            stack.__enter__()  # stops what it started when it fails
        except RuntimeError as exc:
            keep = any(p.stat().st_size for p in log_dir.iterdir())
            _fail(f"{exc}{_log_hint(log_dir, str(exc)) if keep else ''}")
        failure = None
        try:
            yield stack
        except _StackDied as exc:
            failure = str(exc)
        finally:
            stack.__exit__(None, None, None)
        if failure:
            keep = True
            _fail(failure + _log_hint(log_dir, failure))
    finally:
        if not keep:
            shutil.rmtree(log_dir, ignore_errors=True)


def _log_hint(log_dir: Path, message: str) -> str:
    """The last line of the failed process's log (often the reason itself), and where the logs are."""
    logs = sorted((p for p in log_dir.glob("*.log") if p.stat().st_size),
                  key=lambda p: (p.stem in message, p.stat().st_mtime))
    if not logs:
        return f" (logs: {log_dir})"
    lines = [line.strip() for line in logs[-1].read_text(errors="replace").splitlines() if line.strip()]
    return f"; {logs[-1].name} ends: {lines[-1]} (logs: {log_dir})"


def _local_address(host: str) -> str:
    """Where a client on this machine reaches a service listening on `host` (every interface: loopback)."""
    bare = host.strip("[]")
    if bare in ("", "0.0.0.0", "::"):
        return "127.0.0.1"
    return f"[{bare}]" if ":" in bare else bare


def _shown_path(path) -> str:
    """A path as a person would type it here: relative when it is under this directory."""
    path, here = os.path.abspath(path), os.getcwd()
    return os.path.relpath(path, here) if path.startswith(here + os.sep) else path


def _program() -> str:
    """This command as it can be typed again: `maskserve` when that is the one on PATH."""
    import shlex
    import shutil

    argv0 = Path(sys.argv[0])
    if argv0.name == "maskserve":
        found = shutil.which("maskserve")
        return "maskserve" if found and Path(found).resolve() == argv0.resolve() else shlex.quote(_shown_path(argv0))
    return f"{shlex.quote(_shown_path(sys.executable))} -m maskserve"


def _next_steps(host: str, port: int) -> list[str]:
    """A first request to copy, spelled for this stack (its port) and this install (its program, its photo)."""
    import shlex

    from maskserve.service.segment_file import BUNDLED_PHOTO

    target = f"{_local_address(host)}:{port}"
    photo = _shown_path(BUNDLED_PHOTO)
    flag = "" if port == 50051 else f" --target {target}"
    python = (f"{shlex.quote(_shown_path(sys.executable))} -c \"import maskserve; c = maskserve.Client('{target}'); "
              f"c.set_image(open({photo!r}, 'rb').read()); masks, scores, _ = c.predict([[256, 140]], [1]); "
              f"print(masks.shape, scores)\"")
    return [f"next: {_program()} segment {shlex.quote(photo)} --point 256,140{flag}   "
            "(→ out/mask.png, out/overlay.png, out/summary.json)",
            f"  or: {python}"]


def _check_port(host: str, port: int, what: str, flag: str) -> None:
    """Before anything starts, naming the flag that chooses the port."""
    from maskserve.service.stack import check_free

    try:
        check_free(host, port, what, flag)
    except RuntimeError as exc:
        _fail(str(exc))


@app.command()
def up(redis_url: Optional[str] = typer.Option(None, metavar="URL", help="Use this Redis instead of starting one."),
       model_dir: str = typer.Option("", metavar="DIR", show_default=False,
                                     help="Model directory; default the shipped tiny model."),
       model: str = typer.Option("", metavar="TYPE", show_default=False,
                                 help="Serve Meta's model of this type (vit_b, vit_l, vit_h, sam2.1_hiera_tiny, ...): "
                                      "pulled and built once into the cache (needs the export extra), then reused."),
       checkpoint: Optional[Path] = typer.Option(None, metavar="FILE", help="With --model: build from this "
                                                 "checkpoint in Meta's format instead of pulling the published one."),
       port: int = typer.Option(50051, metavar="PORT", help="gRPC port of the decoder."),
       metrics_port: int = typer.Option(9090, metavar="PORT",
                                        help="Decoder /metrics port; the encoder's is the next one."),
       http_port: int = typer.Option(8080, metavar="PORT", help="HTTP/JSON API and the web annotator; 0: off."),
       host: str = typer.Option("127.0.0.1", metavar="ADDRESS", help="Address gRPC, HTTP and /metrics listen on "
                                                                     "(0.0.0.0: every interface).")) -> None:
    """Start a local stack on this machine (Redis, one encoder, one decoder) until Ctrl-C."""
    import signal as _signal
    import time as _time

    # Before anything is downloaded or started, so that a refusal is at once and leaves nothing behind.
    for number, what, flag in ((port, "decoder gRPC", "--port"), (http_port, "decoder HTTP", "--http-port"),
                               (metrics_port, "decoder metrics", "--metrics-port"),
                               (metrics_port + 1, "encoder metrics", "--metrics-port")):
        if number:
            _check_port(host, number, what, flag)
    if model and model_dir:
        _fail("give --model (a model type, built for you) or --model-dir (a model directory), not both")
    if checkpoint is not None and not model:
        _fail("--checkpoint goes with --model (the model type it is a checkpoint of)")
    if model:
        from maskserve.build.download import DownloadError
        from maskserve.build.served import CannotBuild, model_dir_for
        from maskserve.build.specs import UnknownModelType

        try:
            console.print(f"model {model}: pulling and building once, if not in the cache (minutes)")
            model_dir = str(model_dir_for(model, checkpoint))
        except (CannotBuild, UnknownModelType, DownloadError, FileNotFoundError) as exc:
            _fail(str(exc))
        console.print(f"model {model}: {model_dir}")
    if model_dir and not (Path(model_dir) / "manifest.json").is_file():
        _fail(f"--model-dir {model_dir}: " + ("no such directory" if not Path(model_dir).is_dir() else
                                              "not a model directory (no manifest.json; `maskserve build` makes one)"))
    try:  # the annotator's in-browser decoder, once (the page works without it, minus the hover preview)
        from maskserve.build.download import DownloadError, pull_web_runtime

        pull_web_runtime(progress=False)
    except (DownloadError, OSError) as exc:
        console.print(f"[yellow]no ONNX Runtime Web ({escape(str(exc))}); the annotator works without its hover "
                      "preview; `maskserve web pull` to add it")
    with _local_stack(model_dir=model_dir, redis_url=redis_url, grpc_port=port,
                      metrics_ports=(metrics_port, metrics_port + 1), host=host, http_port=http_port) as stack:
        url = f"http://{_local_address(host)}:{http_port}"
        console.print(f"[green]maskserve is up[/]  gRPC {host}:{port}  HTTP " + (url if http_port else "off") +
                      f"  metrics :{metrics_port} (decoder) :{metrics_port + 1} (encoder)  redis {stack.redis_url}  "
                      f"logs {stack.log_dir}")
        if http_port:
            console.print(f"annotate in a browser: {url}/   API: {url}/openapi.json")
        for line in _next_steps(host, port):
            console.print(escape(line))
        console.print("Ctrl-C stops the stack.")
        stopping = []
        _signal.signal(_signal.SIGTERM, lambda *_: stopping.append(1))
        try:
            while True:
                _time.sleep(0.5)
                if stopping:  # before looking at the processes: a signal to the group stops them too
                    break
                for role in ("decoder", "encoder", "redis"):
                    proc = getattr(stack, role)
                    if proc is not None and proc.poll() is not None:
                        raise _StackDied(f"the {role} exited with code {proc.returncode}; the stack is stopped")
        except KeyboardInterrupt:
            pass


@keys_app.command("new")
def keys_new(tenant: str = typer.Option(..., metavar="TENANT", help="The tenant the key acts for."),
             name: Optional[str] = typer.Option(None, metavar="NAME", help="A name for logs (default: TENANT-key)."),
             rpc: list[str] = typer.Option([], metavar="RPC", help="An RPC the key may call (repeatable); default "
                                                                  "all.")) -> None:
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
ApiKeyOpt = typer.Option(None, "--api-key", envvar="MASKSERVE_API_KEY", metavar="KEY",
                         help="Sent as `authorization: Bearer`.")
TlsCaOpt = typer.Option(None, "--tls-ca", metavar="FILE", help="Speak TLS, trusting this CA (PEM); --tls for the "
                                                               "system's CAs.")
TlsOpt = typer.Option(False, "--tls", help="Speak TLS, trusting the system's CAs.")
TlsCertOpt = typer.Option(None, "--tls-cert", metavar="FILE", help="Client certificate (PEM), for mutual TLS.")
TlsKeyOpt = typer.Option(None, "--tls-key", metavar="FILE", help="Its private key (PEM).")
TargetOpt = typer.Option("127.0.0.1:50051", metavar="HOST:PORT", help="The decoder service (`maskserve up` starts "
                                                                       "one).")


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
            point: list[str] = typer.Option([], metavar="X,Y[,LABEL]",
                                            help="A click in pixels from the top-left corner (repeatable): "
                                                 "foreground, or background with LABEL 0."),
            box: Optional[str] = typer.Option(None, metavar="X0,Y0,X1,Y1",
                                              help="A box around the object: its top-left and bottom-right corners."),
            target: str = TargetOpt,
            out: Path = typer.Option(Path("out"), metavar="DIR", help="Folder for mask.png (the best mask), "
                                                                      "overlay.png and summary.json."),
            all_masks: bool = typer.Option(False, "--all-masks", help="Also write every candidate mask: mask_1.png, "
                                                                      "mask_2.png, mask_3.png."),
            json_path: Optional[str] = typer.Option(None, "--json", metavar="FILE",
                                                    help="Write the summary (image id, model version; each mask's "
                                                         "predicted IoU, stability score, box, area and file) here "
                                                         "instead of DIR/summary.json; - prints it, and the report "
                                                         "goes to stderr."),
            api_key: Optional[str] = ApiKeyOpt, tls: bool = TlsOpt, tls_ca: Optional[Path] = TlsCaOpt,
            tls_cert: Optional[Path] = TlsCertOpt, tls_key: Optional[Path] = TlsKeyOpt) -> None:
    """Segment an image through a running service: the best of the model's candidate masks, an overlay that
    shows the prompt, and a JSON summary."""
    import grpc

    from maskserve.service.segment_file import segment_file

    points = [_numbers(p, "--point", (2, 3)) for p in point]
    for p in points:
        if len(p) == 3 and p[2] not in (0.0, 1.0):
            _fail(f"--point {','.join(f'{v:g}' for v in p)}: the label is 1 (foreground) or 0 (background)")
    if out.exists() and not out.is_dir():
        _fail(f"--out {out} is a file; give a folder (it is made if missing)")
    corners = _numbers(box, "--box", (4,)) if box else None
    if corners and (corners[2] <= corners[0] or corners[3] <= corners[1]):
        _fail(f"--box {box}: X1 must be greater than X0 and Y1 greater than Y0 (top-left corner, then bottom-right)")
    try:
        report = segment_file(target, image, points, corners, out, all_masks=all_masks, summary_path=json_path,
                              **_client_options(api_key, tls, tls_ca, tls_cert, tls_key))
    except ValueError as exc:
        _fail(str(exc))
    except grpc.RpcError as exc:
        _fail_rpc(exc, target)
    except OSError as exc:  # --out or --json where nothing can be written
        _fail(f"cannot write {exc.filename or out}: {exc.strerror or exc}")
    if json_path == "-":
        console.print(escape(report))
    else:
        print(report)


_SHAPES = {2: "X,Y", 3: "X,Y,LABEL", 4: "X0,Y0,X1,Y1", 5: "X0,Y0,X1,Y1,LABEL"}


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

    details = exc.details() or ""
    if exc.code() == grpc.StatusCode.UNAVAILABLE and re.search(r"failed to connect|connection refused", details, re.I):
        reason = "connection refused" if "refused" in details.lower() else "cannot connect"
        _fail(f"UNAVAILABLE: no service answers at {target} ({reason}). Start one with `maskserve up`, or give "
              "--target HOST:PORT")
    hint = (f" (is a service running at {target}? Start one with `maskserve up`)"
            if exc.code() == grpc.StatusCode.UNAVAILABLE else "")
    _fail(f"{exc.code().name}: {details}{hint}")


def segment_everything(
    image: Path = typer.Argument(..., help="A JPEG, PNG or WebP file."),
    target: str = TargetOpt,
    in_process: bool = typer.Option(False, "--in-process", help="Run here on --model-dir instead of the service."),
    model_dir: Optional[Path] = typer.Option(None, metavar="DIR", help="With --in-process: a model directory "
                                                                       "(default the tiny model)."),
    out: Path = typer.Option(Path("out"), metavar="DIR", help="Folder for IMAGE.json and IMAGE_overlay.png."),
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

    options = Options(**options)  # the unset ones stay unset: the model's recommended defaults fill them
    try:
        options.validate(max_crop_layers=8, max_points=2**24)  # a mistake here is one line, before any work
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


@app.command("segment-concept")
def segment_concept(
    image: Path = typer.Argument(..., help="A JPEG, PNG or WebP file."),
    phrase: list[str] = typer.Argument(None, help="Noun phrases, each answered on its own (\"forklift\" "
                                                  "\"yellow school bus\"); none: the --box exemplars alone."),
    box: list[str] = typer.Option([], metavar="X0,Y0,X1,Y1[,LABEL]",
                                  help="An exemplar box in pixels (repeatable): an example of the concept, or "
                                       "with LABEL 0 something that is not it."),
    threshold: Optional[float] = typer.Option(None, metavar="P", help="Confidence threshold (default the "
                                                                      "model's: SAM 3's 0.5)."),
    target: str = TargetOpt,
    in_process: bool = typer.Option(False, "--in-process", help="Run here on --model-dir instead of the service."),
    model_dir: Optional[Path] = typer.Option(None, metavar="DIR", help="With --in-process: a SAM 3 model "
                                                                       "directory."),
    out: Path = typer.Option(Path("out"), metavar="DIR", help="Folder for IMAGE.json and IMAGE_overlay.png."),
    api_key: Optional[str] = ApiKeyOpt, tls: bool = TlsOpt, tls_ca: Optional[Path] = TlsCaOpt,
    tls_cert: Optional[Path] = TlsCertOpt, tls_key: Optional[Path] = TlsKeyOpt,
) -> None:
    """Every instance of each phrase in an image (SAM 3's concept prompts) → COCO JSON (one category per
    phrase, masks as RLE, scores) and an overlay PNG."""
    import grpc

    from maskserve.service.segment_file import segment_concept_file

    exemplars = []
    for b in box:
        values = _numbers(b, "--box", (4, 5))
        exemplars.append((values[:4], len(values) == 4 or values[4] != 0))
    if in_process and model_dir is None:
        _fail("--in-process needs --model-dir: a SAM 3 model directory (`maskserve build --model-type sam3`)")
    try:
        print(segment_concept_file(image, list(phrase or ()), exemplars, out, threshold,
                                   target=None if in_process else target,
                                   model_dir=str(model_dir) if model_dir else None,
                                   **_client_options(api_key, tls, tls_ca, tls_cert, tls_key)))
    except ValueError as exc:
        _fail(str(exc))
    except grpc.RpcError as exc:
        _fail_rpc(exc, target)


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
        default, help = Options.describe(f.name)  # as people write it: "512 / 1500", not 0.3413333333333333
        flag = (f.metadata["flag"],) if f.metadata["flag"] else ()
        if kind is bool and not default.startswith("the model family's"):  # a flag: named when on, else nothing
            on = f.metadata.get("reference", f.default)
            default = (f.metadata["flag"] or "--" + f.name.replace("_", "-")).split("/")[0] if on else False
        option = typer.Option(f.default, *flag, help=f"{help}.", show_default=default)
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=option,
                                        annotation=Optional[kind] if f.default is None else kind))
    command.__signature__ = inspect.Signature(params)
    return command


app.command("segment-everything")(_with_generator_options(segment_everything))


@app.command()
def track(video: Path = typer.Argument(..., help="A video file (what OpenCV reads: .mp4, .avi, .mov, ...) or a folder "
                                                 "of frames (JPEG, PNG, WebP or BMP, in name order)."),
          point: list[str] = typer.Option([], metavar="X,Y",
                                          help="X,Y of a click on the first frame: one object per --point "
                                               "(repeatable); objects are numbered 1, 2, ... points first."),
          box: list[str] = typer.Option([], metavar="X0,Y0,X1,Y1",
                                        help="X0,Y0,X1,Y1 on the first frame: one object per --box "
                                             "(repeatable), numbered after the points."),
          out: Optional[str] = typer.Option(None, metavar="FILE|DIR",
                                            help="An .mp4 or .avi overlay video, or a folder (an existing one, "
                                                 "a path ending in / or one without a suffix) for PNG frames "
                                                 "00000.png, ...; default VIDEO_tracked.mp4 in this directory."),
          model_dir: Optional[Path] = typer.Option(None, metavar="DIR",
                                                   help="Track in this process on this SAM 2.1 model directory "
                                                        "(default the shipped tiny model: a SAM model, which "
                                                        "cannot track)."),
          target: Optional[str] = typer.Option(None, metavar="HOST:PORT", help="Track through the service at "
                                                                               "HOST:PORT instead."),
          max_frames: Optional[int] = typer.Option(None, min=1, metavar="N", help="Stop after N frames."),
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
def demo(out: Path = typer.Option(Path("out"), metavar="DIR", help="Folder for the results.")) -> None:
    """Start the local stack, segment the bundled photo through it, write mask and overlay PNGs, stop."""
    import grpc

    from maskserve.service.segment_file import BUNDLED_PHOTO, segment_file
    from maskserve.service.stack import free_port

    with _local_stack(grpc_port=free_port()) as stack:
        console.print(f"[green]local stack up[/] at {stack.target} (redis {stack.redis_url})")
        try:
            print(segment_file(stack.target, BUNDLED_PHOTO, [(256.0, 140.0)], None, out))
        except grpc.RpcError as exc:  # the stack's own fault: its logs say why
            raise _StackDied(f"{exc.code().name}: {exc.details()}") from None
        except OSError as exc:
            _fail(f"cannot write {exc.filename or out}: {exc.strerror or exc}")


@app.command()
def bench(model_dir: Optional[Path] = typer.Option(None, metavar="DIR", help="Model directory; default the shipped "
                                                                            "tiny model."),
          checkpoint: Optional[Path] = typer.Option(None, metavar="FILE", help="The same weights for the reference "
                                                                               "SamPredictor "
                                                                "(default: the tiny model's checkpoint)."),
          model_type: Optional[str] = typer.Option(None, metavar="TYPE", help="The checkpoint's model type "
                                                                              "(default: the model directory's)."),
          requests: int = typer.Option(200, help="Requests timed per scenario (the closed loop shares them out "
                                                "between its clients)."),
          clients: int = typer.Option(4, help="Clients of the closed-loop scenario."),
          rate: float = typer.Option(10.0, help="Open-loop request rate, per second."),
          seconds: float = typer.Option(10.0, help="Length of the open-loop run."),
          encode_images: int = typer.Option(8, help="Distinct images for the encoder pool's throughput."),
          everything_reps: int = typer.Option(3, help="SegmentEverything runs against the reference generator "
                                                      "per setting (0: skip)."),
          sam2_model_dir: Optional[Path] = typer.Option(None, metavar="DIR",
                                                        help="Also a SAM 2.1 model directory, against the "
                                                             "official SAM2ImagePredictor (and its video "
                                                             "tracking against SAM2VideoPredictor)."),
          sam2_checkpoint: Optional[Path] = typer.Option(None, metavar="FILE", help="Its weights, in Meta's format."),
          mobile_sam_model_dir: Optional[Path] = typer.Option(None, metavar="DIR",
                                                              help="Also a MobileSAM (vit_t) model directory, the "
                                                                   "CPU tier: its encoder, a new image's first mask "
                                                                   "and a camera loop against the official "
                                                                   "mobile_sam on the same weights."),
          mobile_sam_checkpoint: Optional[Path] = typer.Option(None, metavar="FILE",
                                                               help="Its weights (mobile_sam.pt's format)."),
          sam3_model_dir: Optional[Path] = typer.Option(None, metavar="DIR",
                                                        help="Also a SAM 3 model directory: SegmentConcept (one "
                                                             "phrase, ten) and its encoder pool against the "
                                                             "official Sam3Processor on the same weights."),
          sam3_checkpoint: Optional[Path] = typer.Option(None, metavar="FILE", help="Its weights (sam3.pt's "
                                                                                    "format)."),
          out: Path = typer.Option(Path("bench"), metavar="DIR", help="Folder for bench.json and bench.png.")) -> None:
    """Benchmark the real stack against the reference in the same run → bench.json, bench.png."""
    from maskserve import bench as bench_lib
    from maskserve.engines import default_model_dir

    if checkpoint is None and model_dir is None:
        checkpoint = default_model_dir().parent / "sam_tiny.pth"  # in the source tree, not in the wheel
        if not checkpoint.is_file():
            _fail("the reference side needs the tiny model's checkpoint, which is in the source tree only; "
                  "give --checkpoint (and --model-dir built from it)")
    if (sam2_model_dir is None) != (sam2_checkpoint is None):
        _fail("--sam2-model-dir and --sam2-checkpoint go together (the reference needs the same weights)")
    if (mobile_sam_model_dir is None) != (mobile_sam_checkpoint is None):
        _fail("--mobile-sam-model-dir and --mobile-sam-checkpoint go together (the reference needs the same weights)")
    if (sam3_model_dir is None) != (sam3_checkpoint is None):
        _fail("--sam3-model-dir and --sam3-checkpoint go together (the reference needs the same weights)")
    result = bench_lib.run(model_dir, checkpoint, model_type, requests, clients, rate, seconds, encode_images, out,
                           everything_reps=everything_reps, sam2_model_dir=sam2_model_dir,
                           sam2_checkpoint=sam2_checkpoint, mobile_sam_model_dir=mobile_sam_model_dir,
                           mobile_sam_checkpoint=mobile_sam_checkpoint, sam3_model_dir=sam3_model_dir,
                           sam3_checkpoint=sam3_checkpoint)
    print(json.dumps({"ratios": result.get("ratios"), "decoder": result["decoder"],
                      "everything": result.get("everything"),
                      "sam2.1": result.get("sam2.1", {}).get("ratios"),
                      "mobile_sam": result.get("mobile_sam", {}).get("ratios"),
                      "sam3": result.get("sam3", {}).get("ratios"),
                      "tracking": result.get("tracking", {}).get("ratios")}, indent=2))
    console.print(f"wrote {out / 'bench.json'} and {out / 'bench.png'}")


@app.command()
def soak(seconds: float = typer.Option(300, help="How long (the documented long form: 1800)."),
         rate: float = typer.Option(20, help="Requests per second, open loop."),
         new_image_every: int = typer.Option(10, help="Every Nth request encodes a new distinct image."),
         window: float = typer.Option(60, help="Seconds per reported window."),
         model_dir: str = typer.Option("", metavar="DIR", show_default=False,
                                       help="Model directory; default the shipped tiny model."),
         out: Path = typer.Option(Path("out/soak"), metavar="DIR", help="Folder for soak.json.")) -> None:
    """A local stack under a fixed request rate (loopback only): latency, errors, memory and the decoder's
    bookkeeping per window → soak.json."""
    from maskserve import soak as soak_lib

    print(soak_lib.report(soak_lib.run(seconds, rate, new_image_every, window, model_dir,
                                      progress=lambda line: print(line, flush=True)), out))


@app.command("soak-track")
def soak_track(model_dir: Path = typer.Option(..., metavar="DIR", help="A SAM 2.1 model directory."),
               frames: int = typer.Option(2000, min=2, help="Frames to track (the CI form: 24)."),
               objects: int = typer.Option(2, min=1, help="Objects tracked in the session."),
               window: int = typer.Option(100, min=1, help="Frames per reported window."),
               out: Path = typer.Option(Path("out/soak-track"), metavar="DIR", help="Folder for soak.json.")) -> None:
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
