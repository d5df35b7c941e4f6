"""Measure the tiny model: mIoU of the best-scored mask for one foreground click at each object's centre,
on held-out procedural scenes, through the serving path (`maskserve.Predictor`, ONNX Runtime, no torch).

    python -m maskserve.build.tiny.evaluate [--model-dir DIR] [--scenes 200]
"""

from __future__ import annotations

import argparse

import numpy as np

from maskserve.build.tiny.scenes import centre_point, make_scene, random_size
from maskserve.engines.predictor import Predictor

HELD_OUT_SEED = 20231124  # training draws from seed 0's stream


def evaluate(model_dir=None, scenes: int = 200, seed: int = HELD_OUT_SEED) -> dict:
    rng = np.random.default_rng(seed)
    predictor = Predictor(model_dir)
    best, single = [], []
    for _ in range(scenes):
        h, w = random_size(rng, int(rng.integers(200, 640)))
        scene = make_scene(rng, h, w)
        predictor.set_image(scene.image)
        for mask in scene.masks:
            point = centre_point(mask)[None]
            masks, scores, _ = predictor.predict(point, np.array([1]), multimask_output=True)
            best.append(_iou(masks[int(np.argmax(scores))], mask))
            one, _, _ = predictor.predict(point, np.array([1]), multimask_output=False)
            single.append(_iou(one[0], mask))
    return {"objects": len(best), "scenes": scenes, "miou_multimask_best": float(np.mean(best)),
            "miou_single_mask": float(np.mean(single))}


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", default=None, help="default: the shipped tiny model")
    ap.add_argument("--scenes", type=int, default=200)
    args = ap.parse_args()
    r = evaluate(args.model_dir, args.scenes)
    print(f"{r['objects']} objects in {r['scenes']} held-out scenes: "
          f"mIoU {r['miou_multimask_best']:.4f} (best of 3 by predicted IoU), {r['miou_single_mask']:.4f} (single mask)")


if __name__ == "__main__":
    main()
