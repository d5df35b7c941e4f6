"""The local stack: a Redis server, one encoder worker and one decoder service as real processes."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_free(host: str, port: int, what: str, flag: str | None = None) -> None:
    """Refuse to start on a port that something already listens on (another local stack, say): otherwise a
    readiness check would find that one and report this stack up while its processes died. `flag`: the option
    that chooses this port, for the message."""
    bare = host.strip("[]")
    with socket.socket(socket.AF_INET6 if ":" in bare else socket.AF_INET) as s:
        try:
            s.bind((bare, port))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise RuntimeError(f"cannot listen on {bare} port {port} ({what}): {exc.strerror or exc}") from None
            choose = f"another port with {flag}" if flag else "other ports (--port, --metrics-port)"
            raise RuntimeError(f"port {port} ({what}) is already in use on {bare}: is another `maskserve up` "
                               f"running? Stop it, or choose {choose}") from None


def start_redis(port: int, directory: str | Path, *args: str) -> subprocess.Popen:
    """A throw-away Redis on loopback; `args` add configuration (`--tls-port`, `--user`, ...)."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed (Debian: apt-get install redis-server)")
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(directory), *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_listening(port, proc, 10, "redis-server")
    return proc


def wait_listening(port: int, proc: subprocess.Popen, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"{what} did not start listening on port {port}")


def start_role(role: str, env: dict[str, str], log: Path | None = None) -> subprocess.Popen:
    out = open(log, "ab") if log else subprocess.DEVNULL
    return subprocess.Popen([sys.executable, "-m", "maskserve.cli", role], env={**os.environ, **env},
                            stdout=out, stderr=subprocess.STDOUT)


def wait_serving(target: str, timeout: float = 60.0, proc: subprocess.Popen | None = None,
                 credentials: grpc.ChannelCredentials | None = None) -> None:
    deadline = time.monotonic() + timeout
    with (grpc.secure_channel(target, credentials) if credentials else grpc.insecure_channel(target)) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"the decoder exited with code {proc.returncode} before serving")
            try:
                if stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    raise RuntimeError(f"the decoder at {target} was not serving after {timeout:.0f} s")


def stop(proc: subprocess.Popen | None, timeout: float = 20.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class LocalStack:
    """`with LocalStack() as stack:` — Redis (started, or reused via redis_url), an encoder, a decoder."""

    def __init__(self, model_dir: str = "", redis_url: str | None = None, grpc_port: int | None = None,
                 metrics_ports: tuple[int, int] | None = None, log_dir: str | Path | None = None,
                 extra_env: dict[str, str] | None = None, encoder_env: dict[str, str] | None = None,
                 host: str = "127.0.0.1", credentials: grpc.ChannelCredentials | None = None,
                 http_port: int | None = None) -> None:
        self.model_dir = model_dir
        self.redis_url = redis_url
        self.grpc_port = grpc_port or free_port()
        self.http_port = http_port or 0  # the HTTP API and the web annotator (`maskserve up`: on); 0 = off
        self.metrics_ports = metrics_ports or (free_port(), free_port())
        self.own_log_dir = log_dir is None  # a temporary folder, removed after a clean run
        self.log_dir = Path(log_dir) if log_dir else Path(tempfile.mkdtemp(prefix="maskserve-"))
        self.host = host  # where gRPC and /metrics listen: loopback unless told otherwise
        self.credentials = credentials  # the TLS a client needs, when the stack's gRPC port speaks TLS
        self.extra_env = extra_env or {}
        self.encoder_env = encoder_env or {}
        self.redis = self.encoder = self.decoder = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.credentials else 'http'}://127.0.0.1:{self.http_port}"

    def env(self, role: str) -> dict[str, str]:
        port = self.metrics_ports[0 if role == "decoder" else 1]
        return {"MASKSERVE_REDIS_URL": self.redis_url, "MASKSERVE_MODEL_DIR": self.model_dir,
                "MASKSERVE_GRPC_HOST": self.host, "MASKSERVE_METRICS_HOST": self.host,
                "MASKSERVE_GRPC_PORT": str(self.grpc_port), "MASKSERVE_METRICS_PORT": str(port),
                "MASKSERVE_HTTP_PORT": str(self.http_port), **self.extra_env}

    def start_encoder(self, wait: bool = True, **env: str) -> subprocess.Popen:
        """Start an encoder worker; with `wait`, return once its engine is loaded (it then opens its metrics port)."""
        proc = start_role("encoder", {**self.env("encoder"), **self.encoder_env, **env}, self.log_dir / "encoder.log")
        if wait:
            self.wait_encoder(proc)
        return proc

    def wait_encoder(self, proc: subprocess.Popen) -> None:
        wait_listening(self.metrics_ports[1], proc, 300, f"the encoder (log: {self.log_dir / 'encoder.log'})")

    def __enter__(self) -> "LocalStack":
        try:
            check_free(self.host, self.grpc_port, "decoder gRPC")
            if self.http_port:
                check_free(self.host, self.http_port, "decoder HTTP")
            for port, role in zip(self.metrics_ports, ("decoder", "encoder")):
                check_free(self.host, port, f"{role} metrics")
            if self.redis_url is None:
                port = free_port()
                self.redis = start_redis(port, self.log_dir)
                self.redis_url = f"redis://127.0.0.1:{port}/0"
            self.encoder = self.start_encoder(wait=False)
            self.decoder = start_role("decoder", self.env("decoder"), self.log_dir / "decoder.log")
            wait_serving(self.target, proc=self.decoder, credentials=self.credentials)
            self.wait_encoder(self.encoder)
        except BaseException:
            self.__exit__(*sys.exc_info())  # keeps the logs of a stack that failed to start
            raise
        return self

    def __exit__(self, *exc) -> None:
        for proc in (self.decoder, self.encoder, self.redis):
            stop(proc)
        if self.own_log_dir and not any(exc):
            shutil.rmtree(self.log_dir, ignore_errors=True)
