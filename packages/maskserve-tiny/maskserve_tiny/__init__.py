"""maskserve's tiny model and demo photo, as installed files (the `maskserve-tiny` distribution)."""

from __future__ import annotations

import importlib.resources
from pathlib import Path

MODEL_DIR = Path(str(importlib.resources.files(__name__) / "model"))  # manifest.json and the ONNX graphs
PHOTO = Path(str(importlib.resources.files(__name__) / "astronaut.jpg"))  # 512 × 512 RGB JPEG
