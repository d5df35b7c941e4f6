"""Where the shipped tiny model and the demo photo are. A source checkout has its own copies,
`maskserve/models/tiny` and `maskserve/data/astronaut.jpg` (the paths the documentation names, and the ones
`make tiny-model` rewrites), and uses them whatever else is installed. An install has them from the
`maskserve-tiny` distribution (packages/maskserve-tiny) that the `server` extra brings: the base wheel is the
client and ships neither."""

from __future__ import annotations

import importlib.resources
from pathlib import Path

INSTALL = "pip install 'maskserve[server]'"


def _in_tree(*parts: str) -> Path:
    return Path(str(importlib.resources.files("maskserve").joinpath(*parts)))


def _installed(name: str) -> Path | None:
    try:
        import maskserve_tiny
    except ImportError:
        return None
    return getattr(maskserve_tiny, name)


def tiny_model_dir() -> Path:
    """The tiny model's directory. Where there is none, ModuleNotFoundError for `maskserve_tiny`, saying what
    to install (as for the server's other packages: `maskserve.Predictor` turns it into its one line)."""
    tree = _in_tree("models", "tiny")
    if (tree / "manifest.json").is_file():
        return tree
    installed = _installed("MODEL_DIR")
    if installed is None:
        raise ModuleNotFoundError(f"the shipped tiny model is not installed (package maskserve-tiny): {INSTALL}",
                                  name="maskserve_tiny")
    return installed


def demo_photo() -> Path:
    """The demo photo (512 × 512 RGB JPEG). Never raises, so that a module may name it at import: where it is
    not installed, the path it would have in the source tree, which the one that opens it reports missing."""
    tree = _in_tree("data", "astronaut.jpg")
    if tree.is_file():
        return tree
    return _installed("PHOTO") or tree
