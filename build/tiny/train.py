"""Train the tiny SAM-architecture model on procedural scenes, on the CPU, and save it in Meta's format.

The model is the real SAM code (segment_anything's modules) shrunk by the `tiny` spec. The loss differs
from SAM's in one way: these scenes have no part/whole ambiguity (a click names one whole object), so all
four mask outputs learn that object instead of only the best of three, which gives every output head the
full signal; the predicted IoU is trained as in SAM (MSE to the achieved IoU). The loss is taken at the
decoder's low resolution against each cell's covered fraction. Images go through the same NumPy
pre-processing the Predictor uses.

    python -m maskserve.build.tiny.train --steps 2000 --out maskserve/models/sam_tiny.pth

(`make tiny-model` runs the current recipe: stages that each continue the last with a fresh schedule, the
first ones at a quarter of the input size, where a step costs a quarter as much.)
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from maskserve.build.checkpoint import build_model
from maskserve.build.specs import get_spec
from maskserve.build.tiny.scenes import centre_point, make_scene, random_size
from maskserve.engines import transforms

# Long sides of the training photos: smaller and larger than the model input, as served (the evaluation
# draws 200–640 pixels).
IMAGE_LONG_SIDES = (200, 768)


def _sample_prompt(rng, mask):
    """(coords, labels, box_or_None, multimask) for one object, in original-image pixels. Mostly clicks
    well inside the object (where people click), some anywhere in it, some boxes and negative clicks."""
    ys, xs = np.nonzero(mask)
    kind = rng.random()
    if kind < 0.3:
        return centre_point(mask)[None], np.array([1.0]), None, True
    if kind < 0.75:
        if kind < 0.6:  # well inside: at least half as deep as the deepest point
            dist = cv2.distanceTransform(np.pad(mask, 1).astype(np.uint8), cv2.DIST_L2, 5)[1:-1, 1:-1]
            ys, xs = np.nonzero(dist >= 0.5 * dist.max())
        i = rng.integers(len(xs))
        return np.array([[xs[i], ys[i]]], np.float32), np.array([1.0]), None, True
    ys, xs = np.nonzero(mask)
    i = rng.integers(len(xs))
    point = np.array([[xs[i], ys[i]]], np.float32)
    if kind < 0.9:
        h, w = mask.shape
        box = np.array([xs.min(), ys.min(), xs.max(), ys.max()], np.float32)
        jitter = rng.normal(0, 0.03, 4) * np.array([w, h, w, h])
        return None, None, box + jitter.astype(np.float32), False
    # a positive click plus a negative one outside the object
    bys, bxs = np.nonzero(~mask)
    j = rng.integers(len(bxs))
    coords = np.concatenate([point, [[bxs[j], bys[j]]]]).astype(np.float32)
    return coords, np.array([1.0, 0.0]), None, False


def _batch(rng, spec, images_per_batch, prompts_per_image):
    long_side = spec.image_size
    batch = []
    for _ in range(images_per_batch):
        h, w = random_size(rng, int(rng.integers(*IMAGE_LONG_SIDES)))
        scene = make_scene(rng, h, w)
        if not scene.masks:
            continue
        x, (nh, nw) = transforms.preprocess(scene.image, long_side, spec.pixel_mean, spec.pixel_std)
        prompts = []
        n = len(scene.masks)  # several prompts per object when there are few: prompts are cheap, images are not
        for k in rng.choice(n, size=prompts_per_image, replace=n < prompts_per_image):
            mask = scene.masks[k]
            coords, labels, box, multi = _sample_prompt(rng, mask)
            tc = None if coords is None else transforms.transform_coords(coords, (h, w), long_side)
            tb = None if box is None else transforms.transform_boxes(box, (h, w), long_side)
            pts, lbl = transforms.prompt_points(tc, labels, tb)
            target = np.zeros((long_side, long_side), np.float32)
            target[:nh, :nw] = cv2.resize(mask.astype(np.float32), (nw, nh), interpolation=cv2.INTER_AREA)
            prompts.append((pts, lbl, multi, _low_res(target, spec)))
        valid = np.zeros((long_side, long_side), np.float32)
        valid[:nh, :nw] = 1
        batch.append((x, prompts, (_low_res(valid, spec) > 0).astype(np.float32)))
    return batch


def _low_res(x: np.ndarray, spec) -> np.ndarray:
    """A map at the decoder's low-resolution output size, each value the covered fraction of its cell: the
    loss is taken there (the bilinear upscale only interpolates, and a logit that follows the coverage
    crosses zero where the boundary crosses the cell), at a quarter of the cost of the input size."""
    side = spec.mask_input_size
    return cv2.resize(x, (side, side), interpolation=cv2.INTER_AREA)


class _Batches(torch.utils.data.IterableDataset):
    """Endless training batches, drawn in a worker process so scene drawing overlaps the model's step."""

    def __init__(self, seed, spec, images_per_batch, prompts_per_image):
        self.args = seed, spec, images_per_batch, prompts_per_image

    def __iter__(self):
        seed, spec, images, prompts = self.args
        cv2.setNumThreads(1)
        rng = np.random.default_rng(seed)
        while True:
            yield _batch(rng, spec, images, prompts)


def _as_is(batch):
    return batch


def _embed_points(prompt_encoder, pts, lbl):
    """Sparse embeddings for points whose labels include box corners (2, 3) and padding (−1)."""
    pe = prompt_encoder.pe_layer.forward_with_coords(pts + 0.5, prompt_encoder.input_image_size)
    lbl = lbl[..., None]
    pe = pe * (lbl != -1) + prompt_encoder.not_a_point_embed.weight * (lbl == -1)
    for i in range(4):
        pe = pe + prompt_encoder.point_embeddings[i].weight * (lbl == i)
    return pe


def _losses(logits, target, valid):
    """Per-mask loss (binary cross-entropy + dice, over the valid unpadded region) and the IoU of the
    thresholded mask against the cells the object covers at least half; logits and (soft) targets
    (N, S, S). Cross-entropy rather than SAM's focal loss: from scratch, focal loss first collapses every
    mask to empty."""
    p = torch.sigmoid(logits)
    n = valid.sum()
    ce = (F.binary_cross_entropy_with_logits(logits, target, reduction="none") * valid).flatten(1).sum(1) / n
    inter = (p * target * valid).flatten(1).sum(1)
    dice = 1 - (2 * inter + 1) / ((p * valid).flatten(1).sum(1) + (target * valid).flatten(1).sum(1) + 1)
    with torch.no_grad():
        pred = (logits > 0).float() * valid
        hard = (target > 0.5).float() * valid
        iou = (pred * hard).flatten(1).sum(1) / ((pred + hard).clamp(max=1).flatten(1).sum(1) + 1e-6)
    return ce + dice, iou


def _resized(state: dict, like: dict) -> dict:
    """`state` fitted to a model of another input size: the encoder's absolute position embedding
    (bicubic) and its global-attention relative positions (linear, as SAM's attention itself interpolates
    them) resampled to the new token grid; every other weight is size-free."""
    out = dict(state)
    for key, value in state.items():
        shape = like[key].shape if key in like else value.shape
        if value.shape == shape:
            continue
        if key.endswith("pos_embed"):  # (1, E, E, C)
            out[key] = F.interpolate(value.permute(0, 3, 1, 2), size=tuple(shape[1:3]), mode="bicubic",
                                     align_corners=False).permute(0, 2, 3, 1)
        elif ".rel_pos_" in key:  # (2E − 1, head dim)
            out[key] = F.interpolate(value.T[None], size=shape[0], mode="linear", align_corners=False)[0].T
        else:
            raise ValueError(f"{key} has shape {tuple(value.shape)}, the model {tuple(shape)}")
        print(f"{key}: {tuple(value.shape)} resampled to {tuple(shape)}")
    return out


def train(steps: int, out: str, seed: int = 0, images_per_batch: int = 4, prompts_per_image: int = 8,
          lr: float = 1e-3, log_every: int = 50, init: str | None = None, spec=None, workers: int = 1,
          bf16: bool = False) -> None:
    """`workers`: processes drawing scenes (0: in this process, which is safe to call from one that runs
    threads, where forking a worker is not). `bf16`: forward passes in bfloat16 autocast (weights, gradients
    and the loss stay float32): on a Zen 4 with AVX512-BF16 the model's forward and backward run 2–2.7×
    faster and a whole step 1.4× (CPUs without bfloat16 instructions: not measured)."""
    torch.manual_seed(seed)
    spec = spec or get_spec("tiny")
    sam = build_model(spec).train()
    if init:  # continue from an earlier run
        sam.load_state_dict(_resized(torch.load(init, map_location="cpu", weights_only=True), sam.state_dict()))
    params = [p for p in sam.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    warmup = max(1, steps // 30)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    pe_dense = None
    start = time.time()
    running = []
    batches = iter(torch.utils.data.DataLoader(_Batches(seed, spec, images_per_batch, prompts_per_image),
                                               batch_size=None, num_workers=workers, collate_fn=_as_is))
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)  # reused by every forward pass
    for step in range(steps):
        batch = next(batches)
        images = torch.from_numpy(np.stack([b[0] for b in batch]))
        with autocast:
            embeddings = sam.image_encoder(images)
            pe_dense = sam.prompt_encoder.get_dense_pe()
        loss_total, ious = 0.0, []
        for i, (_, prompts, valid) in enumerate(batch):
            groups = {}
            for j, p in enumerate(prompts):
                groups.setdefault(len(p[0]), []).append(j)
            for idx in groups.values():
                pts = torch.from_numpy(np.stack([prompts[j][0] for j in idx]))
                lbl = torch.from_numpy(np.stack([prompts[j][1] for j in idx]))
                multi = torch.tensor([prompts[j][2] for j in idx])
                target = torch.from_numpy(np.stack([prompts[j][3] for j in idx]))
                sparse = _embed_points(sam.prompt_encoder, pts, lbl)
                dense = sam.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(
                    len(idx), -1, spec.embedding_size, spec.embedding_size)
                with autocast:
                    low, iou_pred = sam.mask_decoder.predict_masks(embeddings[i:i + 1], pe_dense, sparse, dense)
                low, iou_pred = low.float(), iou_pred.float()
                n, k = low.shape[:2]
                v = torch.from_numpy(valid)
                loss, iou = _losses(low.flatten(0, 1), target.repeat_interleave(k, 0), v)
                loss, iou = loss.view(n, k), iou.view(n, k)
                iou_loss = ((iou_pred - iou) ** 2).mean(1)
                loss_total = loss_total + (loss.mean(1) + iou_loss).sum()
                best = iou_pred[:, 1:].argmax(1, keepdim=True).detach()  # what a caller of multimask gets
                chosen = torch.where(multi, iou[:, 1:].gather(1, best)[:, 0], iou[:, 0])
                ious.extend(chosen.tolist())
        n_prompts = max(1, len(ious))
        opt.zero_grad()
        (loss_total / n_prompts).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        running.append(float(np.mean(ious)) if ious else 0.0)
        if (step + 1) % log_every == 0 or step == 0:
            print(f"step {step + 1}/{steps}  train mIoU {np.mean(running[-log_every:]):.3f}  "
                  f"lr {sched.get_last_lr()[0]:.2e}  {time.time() - start:.0f}s", flush=True)
        if (step + 1) % 500 == 0 or step + 1 == steps:
            torch.save(sam.state_dict(), out)
    print(f"saved {out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--out", default="maskserve/models/sam_tiny.pth")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--init", default=None, help="start from this checkpoint instead of random weights "
                    "(one trained at another input size is resampled to this one)")
    ap.add_argument("--prompts-per-image", type=int, default=8)
    ap.add_argument("--bf16", action="store_true",
                    help="bfloat16 autocast for the forward passes (1.4x faster steps on a Zen 4 with AVX512-BF16)")
    ap.add_argument("--image-size", type=int, default=None,
                    help="train at another input size than the shipped spec's (the recipe's early stages)")
    args = ap.parse_args()
    spec = get_spec("tiny")
    if args.image_size:
        spec = replace(spec, image_size=args.image_size)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    train(args.steps, args.out, seed=args.seed, lr=args.lr, init=args.init, prompts_per_image=args.prompts_per_image,
          spec=spec, bf16=args.bf16)


if __name__ == "__main__":
    main()
