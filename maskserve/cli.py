"""The `maskserve` command line."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

app = typer.Typer(help="Segment Anything as a service.", no_args_is_help=True, add_completion=False)
models_app = typer.Typer(help="Published SAM checkpoints.", no_args_is_help=True)
app.add_typer(models_app, name="models")
console = Console(stderr=True)


def _fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {message}")
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
    model_type: str = typer.Argument(..., help="vit_b, vit_l or vit_h"),
    cache_dir: Optional[Path] = typer.Option(None, help="Where checkpoints are kept (default ~/.cache/maskserve/checkpoints, or $MASKSERVE_CACHE/checkpoints)."),
    base_url: Optional[str] = typer.Option(None, envvar="MASKSERVE_CHECKPOINT_URL", help="A mirror of Meta's checkpoint folder."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Download a published checkpoint, verifying size and md5; an interrupted download resumes."""
    from maskserve.build.download import DownloadError, pull
    from maskserve.build.specs import UnknownModelType

    try:
        path = pull(model_type, cache_dir, base_url, progress=not quiet)
    except (DownloadError, UnknownModelType) as exc:
        _fail(str(exc))
    print(path)


@app.command()
def build(
    out: Path = typer.Option(..., help="The model directory to write."),
    model_type: str = typer.Option("vit_b", help="vit_b, vit_l, vit_h or tiny."),
    checkpoint: Optional[Path] = typer.Option(None, help="A checkpoint in Meta's format; default: pull the published one."),
    backend: str = typer.Option("onnxruntime", help="onnxruntime (CPU) or tensorrt (NVIDIA GPU)."),
    precision: str = typer.Option("fp32", help="fp32, or fp16 for TensorRT."),
    max_encoder_batch: int = typer.Option(8, help="TensorRT: largest encoder batch."),
    max_decoder_batch: int = typer.Option(64, help="TensorRT: largest batch of prompts."),
    max_points: int = typer.Option(64, help="TensorRT: most points (boxes count two) in one prompt."),
) -> None:
    """Turn a SAM checkpoint into a model directory (encoder, decoder, manifest)."""
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


def main() -> None:
    app()


if __name__ == "__main__":
    main()
