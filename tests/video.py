"""Video tracking's test material: a real-looking clip, a scenario of prompts over it, and the official
`SAM2VideoPredictor` driven through the same scenario (the reference every tracking test compares with)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

# Two objects prompted on the first frame (a click and a box), a third added mid-stream, a correction click on
# a later frame; the green square leaves the frame at frames 4–5 and returns.
SCENARIO = [
    ("frame", 0),
    ("points", 1, [[60, 120]], [1]),
    ("box", 2, [220, 60, 280, 120]),
    ("frame", 1), ("frame", 2), ("frame", 3),
    ("points", 3, [[160, 170]], [1]),
    ("frame", 4), ("frame", 5),
    ("correct", 1, [[100, 120]], [0]),
    ("frame", 6), ("frame", 7),
]


def clip(n: int = 8, h: int = 240, w: int = 320) -> list[np.ndarray]:
    """A photo with a disc moving right, a square that leaves on the right and comes back, and an ellipse
    passing over the disc — as JPEG-decoded frames (what a camera stream delivers)."""
    import cv2
    from PIL import Image
    import io
    from skimage import data

    background = cv2.resize(data.coffee(), (w, h))
    frames = []
    for f in range(n):
        im = background.copy()
        cv2.circle(im, (60 + 20 * f, 120), 35, (220, 40, 40), -1)
        x = 250 + (60 * f if f < 4 else 60 * (7 - f))
        cv2.rectangle(im, (x - 30, 60), (x + 30, 120), (40, 200, 60), -1)
        cv2.ellipse(im, (160, 180 - 5 * f), (50, 25), 0, 0, 360, (30, 30, 200), -1)
        buf = io.BytesIO()
        Image.fromarray(im).save(buf, format="JPEG", quality=95)
        frames.append(np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")))
    return frames


def cpu_connected_components(mask):
    """sam2's CUDA `get_connected_components` (8-connected labels and each pixel's component area) on the CPU,
    so that the reference fills small holes as it does on a GPU (without its extension it skips them)."""
    import cv2
    import torch

    m = mask.to(torch.uint8).numpy()
    labels, counts = np.zeros(m.shape, np.int32), np.zeros(m.shape, np.int32)
    for i in range(m.shape[0]):
        _, lab, stats, _ = cv2.connectedComponentsWithStats(m[i, 0], connectivity=8)
        area = stats[:, cv2.CC_STAT_AREA].copy()
        area[0] = 0
        lab = np.where(m[i, 0] > 0, lab, 0)
        labels[i, 0], counts[i, 0] = lab, area[lab]
    return torch.from_numpy(labels), torch.from_numpy(counts)


def run_reference(checkpoint: Path, config: str, frames: list[np.ndarray], scenario, folder: Path, mean, std):
    """{step index: {object id: (mask (H, W) bool, object score logit)}} for each frame and prompt step of
    `scenario`, by SAM2VideoPredictor on `frames` (prepared as maskserve prepares them: the image predictor's
    resize; its own loader's bicubic is a documented difference)."""
    import torch
    from PIL import Image
    import sam2.utils.misc as misc
    from sam2.build_sam import build_sam2_video_predictor

    from maskserve.engines import sam2_transforms

    misc.get_connected_components = cpu_connected_components
    folder.mkdir(parents=True, exist_ok=True)
    for i, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"{i:05d}.jpg", quality=95)
    predictor = build_sam2_video_predictor(config, ckpt_path=str(checkpoint), device="cpu")
    state = predictor.init_state(str(folder))
    side = predictor.image_size
    state["images"] = torch.from_numpy(np.stack([sam2_transforms.preprocess(f, side, mean, std) for f in frames]))
    state["cached_features"] = {}

    def scores(f, temp):
        out = {}
        for oid in state["obj_ids"]:
            idx = state["obj_id_to_idx"][oid]
            dicts = ([state["temp_output_dict_per_obj"][idx]] if temp else []) + [state["output_dict_per_obj"][idx]]
            for d in dicts:
                for key in ("cond_frame_outputs", "non_cond_frame_outputs"):
                    if f in d[key]:
                        out.setdefault(oid, float(d[key][f]["object_score_logits"]))
        return out

    def record(f, ids, masks, temp):
        s = scores(f, temp)
        return {oid: (masks[k, 0].numpy() > 0, s.get(oid, -1024.0)) for k, oid in enumerate(ids)}

    results: dict[int, dict] = {}
    frame_steps: dict[int, int] = {}  # frame → its step
    current, done = -1, -1  # the current frame; the last one the reference propagated

    def propagate_to(f):
        nonlocal done
        if f <= done or not state["obj_ids"]:
            return
        start = 0 if done < 0 else done + 1
        for g, ids, masks in predictor.propagate_in_video(state, start_frame_idx=start,
                                                          max_frame_num_to_track=f - start):
            if g in frame_steps and frame_steps[g] not in results:
                results[frame_steps[g]] = record(g, ids, masks, temp=False)
        done = f

    for n, step in enumerate(scenario):
        if step[0] == "frame":
            current = step[1]
            frame_steps[current] = n
            if not state["obj_ids"]:
                results[n] = {}
            continue
        propagate_to(current)
        if step[0] == "box":
            _, ids, masks = predictor.add_new_points_or_box(state, current, step[1], box=step[2])
        else:
            _, ids, masks = predictor.add_new_points_or_box(state, current, step[1], points=step[2], labels=step[3],
                                                            clear_old_points=step[0] != "correct")
        results[n] = record(current, ids, masks, temp=True)
        done = max(done, current)  # the prompt frame's outputs are the reference's answer there
    propagate_to(current)
    return results


def compare(expected: dict, got: dict) -> tuple[float, float]:
    """(worst mask IoU, worst |Δ object score|) between two {object id: (mask, score)}."""
    assert set(expected) == set(got), (sorted(expected), sorted(got))
    worst_iou, worst_score = 1.0, 0.0
    for oid, (a, sa) in expected.items():
        b, sb = got[oid]
        union = np.count_nonzero(a | b)
        iou = 1.0 if union == 0 else np.count_nonzero(a & b) / union
        worst_iou, worst_score = min(worst_iou, iou), max(worst_score, abs(sa - sb))
    return worst_iou, worst_score
