"""SAM 2.1 video tracking as a stream: one frame at a time, state bounded, answers equal to `SAM2VideoPredictor`'s.

The official predictor loads the whole video and keeps every frame's outputs. Its attention, though, reads
only the conditioning (prompted) frames, the last `num_maskmem - 1` frames' memories and the last
`max_obj_ptrs_in_encoder - 1` frames' object pointers; a `TrackingSession` keeps exactly those, so its size is
flat over a stream of any length and its masks are the reference's (build/sam2_tracking_export.py says which
graph computes what). What the reference would keep without bound — every conditioning frame of a long
session with many corrections — is bounded by `max_cond_frames` (the reference's `max_cond_frames_in_attn`,
the most recent ones kept; unbounded there by default).

Frames are numbered by the session (0, 1, … for the frames it tracks): a frame the caller drops is not a frame
to the model. Prompts apply to the current (last tracked) frame, as `add_new_points_or_box` on the frame a
`propagate_in_video` last yielded; a new object's prompt makes a conditioning frame, a prompt on an object
already tracked on this frame corrects it (the reference's non-conditioning correction, fed its last mask).
Memories of prompted outputs are encoded before the next frame (the reference's `propagate_in_video_preflight`).
All objects of a frame run as one batch in each graph (grouped by memory length where they differ).

Frames use the image predictor's preparation (engines/sam2_transforms.py), so a frame's embedding is any
image's: the video predictor's own loader resizes 8-bit frames with Pillow's bicubic filter instead.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import sam2_transforms as t

NO_OBJ_SCORE = -1024.0  # the reference's logit for "no object here"
MASK_OUT_SCALE, MASK_OUT_BIAS = 20.0, -10.0  # a mask prompt as logits (±10)
STATE_FORMAT = 1
# Without point prompts the reference still feeds one padding point, and its prompt encoder pads another.
NO_POINTS = (np.zeros((1, 2, 2), np.float32), -np.ones((1, 2), np.float32))


def to_bfloat16(x: np.ndarray) -> np.ndarray:
    """float32 → bfloat16 bits (uint16), rounding to nearest even as torch's `.to(torch.bfloat16)` does."""
    bits = np.ascontiguousarray(x, np.float32).view(np.uint32)
    return ((bits + (((bits >> 16) & 1) + np.uint32(0x7FFF))) >> 16).astype(np.uint16)


def from_bfloat16(x: np.ndarray) -> np.ndarray:
    return (x.astype(np.uint32) << 16).view(np.float32)


def resize_matrix(n_in: int, n_out: int, antialias: bool) -> np.ndarray:
    """(n_out, n_in) weights of torch's bilinear `interpolate` (align_corners=False) along one axis; with
    `antialias`, its triangle filter widened by the scale when shrinking (`_upsample_bilinear2d_aa`)."""
    scale = n_in / n_out
    support = scale if (antialias and scale > 1.0) else 1.0
    a = np.zeros((n_out, n_in), np.float64)
    if not antialias or scale <= 1.0:
        for i in range(n_out):
            src = max((i + 0.5) * scale - 0.5, 0.0)
            lo = min(int(math.floor(src)), n_in - 1)
            hi = min(lo + 1, n_in - 1)
            w = src - lo
            a[i, lo] += 1 - w
            a[i, hi] += w
        return a.astype(np.float32)
    for i in range(n_out):
        center = scale * (i + 0.5)
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), n_in)
        j = np.arange(lo, hi)
        w = np.maximum(0.0, 1.0 - np.abs((j - center + 0.5) / support))
        a[i, lo:hi] = w / w.sum()
    return a.astype(np.float32)


def resize(x: np.ndarray, rows: int, cols: int, antialias: bool) -> np.ndarray:
    """(..., H, W) float32 → (..., rows, cols) as torch's bilinear interpolate would."""
    r = resize_matrix(x.shape[-2], rows, antialias)
    c = resize_matrix(x.shape[-1], cols, antialias)
    return (r @ x.astype(np.float32) @ c.T).astype(np.float32)


def _tokens(raw: np.ndarray) -> np.ndarray:
    """(1, C, H, W) → (1, H·W, C): the frame's level as memory attention's queries."""
    return np.ascontiguousarray(raw.reshape(1, raw.shape[1], -1).transpose(0, 2, 1))


def sine_pe(positions: np.ndarray, dim: int, temperature: float = 10000.0) -> np.ndarray:
    """The reference's `get_1d_sine_pe`: (P,) → (P, dim)."""
    half = dim // 2
    steps = np.arange(half, dtype=np.float32)
    dim_t = np.float32(temperature) ** (2 * (steps // 2) / np.float32(half))
    pe = positions.astype(np.float32)[:, None] / dim_t.astype(np.float32)
    return np.concatenate([np.sin(pe), np.cos(pe)], axis=-1).astype(np.float32)


@dataclass
class Output:
    """One object's result on one frame (the reference's per-frame output entry)."""

    cond: bool  # a conditioning frame (the object's first prompt there)
    obj_ptr: np.ndarray  # (hidden_dim,) float32
    score: float  # object score logit; > 0: the object is visible
    iou: float  # predicted IoU of the answered mask
    low_res: np.ndarray | None  # (256, 256) logits: kept for the session's current frame only
    maskmem: np.ndarray | None = None  # (mem_dim, 64, 64) bfloat16 bits; None until encoded
    from_prompt: bool = False  # memory from a prompted mask is binarised


@dataclass
class TrackedObject:
    outputs: dict[int, Output] = field(default_factory=dict)
    prompt_frame: int | None = None  # the frame `points` belong to
    points: np.ndarray | None = None  # (N, 2) input-frame coordinates, box corners first
    labels: np.ndarray | None = None


@dataclass
class ObjectResult:
    object_id: int
    low_res: np.ndarray  # (256, 256) logits (NO_OBJ_SCORE where the object is absent)
    score: float
    iou: float

    @property
    def visible(self) -> bool:
        return self.score > 0


class Tracker:
    """A model directory's tracking graphs (ONNX Runtime) and constants; sessions hold the state."""

    def __init__(self, model_dir: str | Path, manifest, threads: int | None = None) -> None:
        from .onnxruntime_backend import _session

        spec = manifest.tracking
        if not spec:
            raise ValueError(f"{model_dir}: this model cannot track video (its family is {manifest.family}; "
                             f"tracking needs a SAM 2.1 model directory built with this maskserve)")
        d = Path(model_dir)
        self.decoder = _session(d / spec["decoder_file"], threads)
        self.attention = _session(d / spec["memory_attention_file"], threads)
        self.memory_encoder = _session(d / spec["memory_encoder_file"], threads)
        with np.load(d / spec["constants_file"]) as c:
            self.c = {k: c[k] for k in c.files}
        self.num_maskmem = spec["num_maskmem"]
        self.max_obj_ptrs = spec["max_obj_ptrs_in_encoder"]
        self.stride = spec["memory_temporal_stride"]
        self.mem_dim, self.hidden_dim = spec["mem_dim"], spec["hidden_dim"]
        self.fill_hole_area = spec["fill_hole_area"]
        self.multimask_pts = (spec["multimask_min_pt_num"], spec["multimask_max_pt_num"])
        self.reference_max_cond = spec["max_cond_frames_in_attn"]
        self.image_size = manifest.image_size
        self.mask_size = manifest.mask_input_size

    # -- the graphs -------------------------------------------------------------------------------------
    def decode(self, pix_feat, arrays, coords, labels, mask_input, has_mask):
        iou, low, score, ptrs = self.decoder.run(None, {
            "pix_feat": np.ascontiguousarray(pix_feat, np.float32),
            "high_res_feats_0": arrays["high_res_feats_0"], "high_res_feats_1": arrays["high_res_feats_1"],
            "point_coords": coords.astype(np.float32), "point_labels": labels.astype(np.float32),
            "mask_input": mask_input.astype(np.float32), "has_mask_input": has_mask.astype(np.float32)})
        return iou, low, score[:, 0], ptrs

    def attend(self, curr, memory, memory_pos, ptrs, ptr_pos) -> np.ndarray:
        return self.attention.run(None, {"curr": curr, "memory": memory, "memory_pos": memory_pos,
                                         "obj_ptrs": ptrs, "obj_pos": ptr_pos})[0]

    def encode_memory(self, raw, low_res, scores, binarize) -> np.ndarray:
        feats = self.memory_encoder.run(None, {
            "pix_feat": raw, "low_res_masks": np.ascontiguousarray(low_res[:, None], np.float32),
            "object_score_logits": np.asarray(scores, np.float32).reshape(-1, 1),
            "binarize": np.asarray(binarize, np.float32)})[0]
        return to_bfloat16(feats)

    def session(self, original_size: tuple[int, int], num_frames: int | None = None,
                max_cond_frames: int | None = None) -> "TrackingSession":
        return TrackingSession(self, original_size, num_frames, max_cond_frames)


class TrackingSession:
    """One video's objects and the memory the model can still read; `track(arrays)` per frame."""

    def __init__(self, tracker: Tracker, original_size: tuple[int, int], num_frames: int | None = None,
                 max_cond_frames: int | None = None) -> None:
        self.tracker = tracker
        self.original_size = (int(original_size[0]), int(original_size[1]))
        self.num_frames = num_frames  # a known video length (as the reference's init_state); None: a stream
        ref = tracker.reference_max_cond
        self.max_cond_frames = max_cond_frames if max_cond_frames is not None else (None if ref < 0 else ref)
        if self.max_cond_frames is not None and self.max_cond_frames < 2:
            raise ValueError("max_cond_frames is at least 2 (SAM 2.1 reads the closest before and after)")
        if num_frames is not None and num_frames < 2:
            raise ValueError(f"a video of {num_frames} frame(s): expected_frames is at least 2, or unset (a stream)")
        self.frame = -1
        self.objects: dict[int, TrackedObject] = {}
        self.arrays: dict[str, np.ndarray] | None = None  # the current frame's embedding

    # -- public verbs -----------------------------------------------------------------------------------
    def track(self, arrays) -> list[ObjectResult]:
        """The next frame's embedding arrays → every object's answer on it."""
        self._encode_pending()
        f = self.frame + 1
        if self.num_frames is not None and f >= self.num_frames:
            raise ValueError(f"frame {f} of a video declared {self.num_frames} frames long")
        previous, self.arrays = self.arrays, {k: np.asarray(v, np.float32) for k, v in arrays.items()}
        try:
            answers = self._track(f)
        except BaseException:
            self.arrays = previous  # nothing changed: the session is as it was before this frame
            raise
        self.frame = f
        for i, out in answers.items():
            self.objects[i].outputs[f] = out
        self._prune()
        return self.results()

    def _track(self, f: int) -> dict[int, Output]:
        answers: dict[int, Output] = {}
        ids = [i for i, o in self.objects.items() if any(out.cond for out in o.outputs.values())]
        groups: dict[tuple[int, int], list[int]] = {}
        plans = {}
        for i in ids:
            plans[i] = self._memory_plan(self.objects[i], f)
            groups.setdefault((len(plans[i][0]), len(plans[i][1])), []).append(i)
        raw = self._raw()
        curr = _tokens(raw)
        for group in groups.values():
            pix = self._attend(curr, [plans[i] for i in group])
            n = len(group)
            coords, labels = np.zeros((n, 2, 2), np.float32), -np.ones((n, 2), np.float32)  # NO_POINTS
            masks = np.zeros((n, 1, self.tracker.mask_size, self.tracker.mask_size), np.float32)
            outs = self._heads(pix, coords, labels, masks, np.zeros(n, np.float32), points=0)
            maskmem = self.tracker.encode_memory(raw, np.stack([o[0] for o in outs]),
                                                 [o[1] for o in outs], np.zeros(n))
            for i, (low, score, iou, ptr), mem in zip(group, outs, maskmem):
                answers[i] = Output(False, ptr, score, iou, self._fill(low), mem)
        return answers

    def add_points(self, object_id: int, points=None, labels=None, box=None,
                   clear_old_points: bool = True) -> list[ObjectResult]:
        """Points (original pixels, labels 1/0) and/or a box (x0, y0, x1, y1) for an object on the current
        frame: a new object's first prompt, more clicks for an object prompted here (`clear_old_points`
        False appends to them), or a correction of an object tracked here."""
        self._need_frame()
        if points is None and box is None:
            raise ValueError("a prompt needs points or a box")
        if (points is None) != (labels is None):
            raise ValueError("points and labels go together")
        if box is not None and not clear_old_points:
            raise ValueError("a box replaces an object's points on this frame (it must come before any point)")
        size, side = self.original_size, self.tracker.image_size
        pts = np.zeros((0, 2), np.float32) if points is None else t.transform_coords(
            np.asarray(points, np.float32).reshape(-1, 2), size, side)
        lbl = np.zeros((0,), np.float32) if labels is None else np.asarray(labels, np.float32).reshape(-1)
        if len(pts) != len(lbl):
            raise ValueError(f"{len(pts)} points but {len(lbl)} labels")
        if box is not None:
            corners = t.transform_boxes(np.asarray(box, np.float32).reshape(4), size, side)[0]
            pts, lbl = np.concatenate([corners, pts]), np.concatenate([np.array([2, 3], np.float32), lbl])
        obj = self.objects.get(int(object_id)) or TrackedObject()  # a new object joins once it has an answer
        f = self.frame
        if not clear_old_points and obj.prompt_frame == f and obj.points is not None:
            pts, lbl = np.concatenate([obj.points, pts]), np.concatenate([obj.labels, lbl])
        prev = obj.outputs.get(f)
        init = prev is None or prev.cond  # not tracked here: a conditioning frame, as the reference decides
        prev_logits = None if prev is None or prev.low_res is None else np.clip(prev.low_res, -32.0, 32.0)
        if init:
            pix = self.arrays["image_embeddings"]
        else:
            raw = self._raw()
            curr = _tokens(raw)
            pix = self._attend(curr, [self._memory_plan(obj, f)])
        coords, labels_in = t.prompt_points(None, None, None)
        coords = np.concatenate([pts, coords])[None]
        labels_in = np.concatenate([lbl, labels_in])[None]
        m = self.tracker.mask_size
        mask = np.zeros((1, 1, m, m), np.float32) if prev_logits is None else prev_logits[None, None]
        has = np.array([0.0 if prev_logits is None else 1.0], np.float32)
        (low, score, iou, ptr), = self._heads(pix, coords, labels_in, mask, has, points=len(pts))
        obj.prompt_frame, obj.points, obj.labels = f, pts, lbl
        obj.outputs[f] = Output(init, ptr, score, iou, self._fill(low), None, from_prompt=True)
        self.objects[int(object_id)] = obj
        return self.results()

    def points_on_frame(self, object_id: int) -> int:
        """The clicks (and box corners) an object has on the current frame: a correction adds to them."""
        obj = self.objects.get(int(object_id))
        return 0 if obj is None or obj.prompt_frame != self.frame or obj.points is None else len(obj.points)

    def add_mask(self, object_id: int, mask) -> list[ObjectResult]:
        """A binary mask (original size, or any size: it is resized as the reference does) for an object on the
        current frame; it becomes the object's answer here as given (`use_mask_input_as_output_without_sam`)."""
        self._need_frame()
        mask = np.asarray(mask).astype(bool)
        if mask.ndim != 2:
            raise ValueError(f"a mask prompt is one 2-D mask, not shape {mask.shape}")
        side, m = self.tracker.image_size, self.tracker.mask_size
        full = mask.astype(np.float32)
        if full.shape != (side, side):
            full = (resize(full, side, side, antialias=True) >= 0.5).astype(np.float32)
        logits = full * MASK_OUT_SCALE + MASK_OUT_BIAS
        low = resize(logits, m, m, antialias=True)
        w, b = self.tracker.c["mask_downsample_weight"], self.tracker.c["mask_downsample_bias"]
        down = np.einsum("iajb,ab->ij", full.reshape(m, side // m, m, side // m), w) + b
        raw = self._raw()
        _, _, score, ptrs = self.tracker.decode(raw, self.arrays, *NO_POINTS,
                                                down[None, None].astype(np.float32), np.ones(1, np.float32))
        ptr = self._gate_pointer(ptrs[0, 0], score[0])  # token 0: a single-mask answer
        visible = bool(full.any())
        ptr = ptr if visible else self.tracker.c["no_obj_ptr"].astype(np.float32)
        score = MASK_OUT_SCALE * float(visible) + MASK_OUT_BIAS
        obj = self.objects.get(int(object_id)) or TrackedObject()
        f = self.frame
        prev = obj.outputs.get(f)
        init = prev is None or prev.cond
        obj.prompt_frame, obj.points, obj.labels = None, None, None
        obj.outputs[f] = Output(init, ptr, score, 1.0, self._fill(low), None, from_prompt=True)
        self.objects[int(object_id)] = obj
        return self.results()

    def remove_object(self, object_id: int) -> None:
        if self.objects.pop(int(object_id), None) is None:
            raise KeyError(object_id)

    def reset(self) -> None:
        """Forget every object (the frame count goes on)."""
        self.objects.clear()

    def results(self) -> list[ObjectResult]:
        """Every object's answer on the current frame (an object without one there is absent)."""
        out = []
        m = self.tracker.mask_size
        for i, obj in self.objects.items():
            o = obj.outputs.get(self.frame)
            if o is None or o.low_res is None:
                out.append(ObjectResult(i, np.full((m, m), NO_OBJ_SCORE, np.float32), NO_OBJ_SCORE, 0.0))
            else:
                out.append(ObjectResult(i, o.low_res, o.score, o.iou))
        return out

    def masks(self, results: list[ObjectResult] | None = None) -> np.ndarray:
        """(objects, H, W) bool at the original size."""
        results = self.results() if results is None else results
        if not results:
            return np.zeros((0, *self.original_size), bool)
        return t.upscale_logits(np.stack([r.low_res for r in results]), self.original_size) > 0

    # -- state --------------------------------------------------------------------------------------------
    def state_bytes(self) -> bytes:
        """The session as bytes (NumPy's npz), memories encoded first; `restore` reads it back."""
        self._encode_pending()
        arrays: dict[str, np.ndarray] = {
            "meta": np.array([STATE_FORMAT, self.frame, *self.original_size,
                              -1 if self.num_frames is None else self.num_frames,
                              -1 if self.max_cond_frames is None else self.max_cond_frames], np.int64)}
        for i, obj in self.objects.items():
            frames = sorted(obj.outputs)
            if not frames:
                continue
            p = f"o{i}_"
            arrays[p + "frames"] = np.array(frames, np.int64)
            arrays[p + "flags"] = np.array([[o.cond, o.from_prompt, o.maskmem is not None] for o in
                                            (obj.outputs[f] for f in frames)], bool).reshape(-1, 3)
            arrays[p + "ptrs"] = np.stack([obj.outputs[f].obj_ptr for f in frames])
            arrays[p + "scores"] = np.array([[obj.outputs[f].score, obj.outputs[f].iou] for f in frames], np.float32)
            with_mem = [f for f in frames if obj.outputs[f].maskmem is not None]
            if with_mem:
                arrays[p + "maskmem"] = np.stack([obj.outputs[f].maskmem for f in with_mem])
            current = obj.outputs.get(self.frame)
            if current is not None and current.low_res is not None:
                arrays[p + "low_res"] = current.low_res
            if obj.points is not None and obj.prompt_frame == self.frame:
                arrays[p + "points"] = np.concatenate([obj.points, obj.labels[:, None]], axis=1)
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        return buf.getvalue()

    @classmethod
    def restore(cls, tracker: Tracker, data: bytes) -> "TrackingSession":
        with np.load(io.BytesIO(data)) as z:
            a = {k: z[k] for k in z.files}
        fmt, frame, h, w, num_frames, max_cond = (int(x) for x in a["meta"])
        if fmt != STATE_FORMAT:
            raise ValueError(f"session state format {fmt} is not {STATE_FORMAT}")
        s = cls(tracker, (h, w), None if num_frames < 0 else num_frames, None if max_cond < 0 else max_cond)
        s.frame = frame
        for key in a:
            if not key.endswith("_frames"):
                continue
            p = key[:-len("frames")]
            i = int(p[1:-1])
            obj = TrackedObject()
            mem = iter(a.get(p + "maskmem", ()))
            for n, f in enumerate(a[key]):
                cond, prompt, has_mem = a[p + "flags"][n]
                score, iou = a[p + "scores"][n]
                obj.outputs[int(f)] = Output(bool(cond), a[p + "ptrs"][n], float(score), float(iou),
                                             a[p + "low_res"] if int(f) == frame and p + "low_res" in a else None,
                                             next(mem) if has_mem else None, bool(prompt))
            if p + "points" in a:
                obj.prompt_frame, obj.points, obj.labels = frame, a[p + "points"][:, :2], a[p + "points"][:, 2]
            s.objects[i] = obj
        return s

    def resume(self, arrays) -> None:
        """Give a restored session its current frame's embedding again (needed for prompts on that frame)."""
        self.arrays = {k: np.asarray(v, np.float32) for k, v in arrays.items()}

    # -- the reference's steps ------------------------------------------------------------------------------
    def _need_frame(self) -> None:
        if self.arrays is None:
            raise ValueError("no frame yet: send a frame before prompting objects")

    def _raw(self) -> np.ndarray:
        """The current frame's stride-16 level as the video model reads it: without `no_mem_embed`."""
        e = self.arrays["image_embeddings"]
        return (e - self.tracker.c["no_mem_embed"].reshape(1, -1, 1, 1)).astype(np.float32)

    def _selected_cond(self, obj: TrackedObject, f: int) -> tuple[list[int], set[int]]:
        """The conditioning frames attention reads (`select_closest_cond_frames`: forward only, the most
        recent `max_cond_frames`), and the others still held."""
        cond = sorted(t_ for t_, o in obj.outputs.items() if o.cond and t_ < f)
        if self.max_cond_frames is None or len(cond) <= self.max_cond_frames:
            return cond, set()
        return cond[-self.max_cond_frames:], set(cond[:-self.max_cond_frames])

    def _memory_plan(self, obj: TrackedObject, f: int):
        """`_prepare_memory_conditioned_features`'s choice: [(frame, t_pos)] spatial memories, and
        [(frame, temporal distance)] object pointers."""
        tr = self.tracker
        selected, unselected = self._selected_cond(obj, f)

        def non_cond(frame: int):
            o = obj.outputs.get(frame)
            if o is None or (o.cond and frame not in unselected):
                return None
            return o

        spatial = [(t_, 0) for t_ in selected]
        r = tr.stride
        for t_pos in range(1, tr.num_maskmem):
            t_rel = tr.num_maskmem - t_pos
            prev = f - 1 if t_rel == 1 else ((f - 2) // r) * r - (t_rel - 2) * r
            if non_cond(prev) is not None:
                spatial.append((prev, t_pos))
        max_ptrs = tr.max_obj_ptrs if self.num_frames is None else min(self.num_frames, tr.max_obj_ptrs)
        pointers = [(t_, f - t_) for t_ in selected if t_ <= f]
        for t_diff in range(1, max_ptrs):
            t_ = f - t_diff
            if t_ < 0 or (self.num_frames is not None and t_ >= self.num_frames):
                break
            if non_cond(t_) is not None:
                pointers.append((t_, t_diff))
        return spatial, pointers, max_ptrs, obj

    def _attend(self, curr: np.ndarray, plans) -> np.ndarray:
        tr, c = self.tracker, self.tracker.c
        hw = curr.shape[1]
        memory, memory_pos, ptrs, ptr_pos = [], [], [], []
        split = tr.hidden_dim // tr.mem_dim
        for spatial, pointers, max_ptrs, obj in plans:
            mem = [from_bfloat16(obj.outputs[f].maskmem).reshape(tr.mem_dim, hw).T for f, _ in spatial]
            pos = [c["maskmem_pos_enc"] + c["maskmem_tpos_enc"][tr.num_maskmem - t_pos - 1] for _, t_pos in spatial]
            memory.append(np.concatenate(mem))
            memory_pos.append(np.concatenate(pos))
            p = np.stack([obj.outputs[f].obj_ptr for f, _ in pointers]).reshape(-1, tr.mem_dim)
            dist = np.array([d for _, d in pointers], np.float32)
            pe = sine_pe(dist / np.float32(max_ptrs - 1), tr.hidden_dim)
            pe = pe @ c["obj_ptr_tpos_proj_weight"].T + c["obj_ptr_tpos_proj_bias"]
            ptrs.append(p)
            ptr_pos.append(np.repeat(pe.astype(np.float32), split, axis=0))
        return tr.attend(curr, np.stack(memory), np.stack(memory_pos).astype(np.float32),
                         np.stack(ptrs).astype(np.float32), np.stack(ptr_pos))

    def _gate_pointer(self, ptr: np.ndarray, score: float) -> np.ndarray:
        """`fixed_no_obj_ptr`: an absent object's pointer is `no_obj_ptr`."""
        return ptr.astype(np.float32) if score > 0 else self.tracker.c["no_obj_ptr"].astype(np.float32)

    def _heads(self, pix, coords, labels, masks, has_mask, points: int):
        """`_forward_sam_heads` after the graph: the answered token, no-object masking, the gated pointer.
        → [(low_res, score, iou, obj_ptr)] per row."""
        tr = self.tracker
        iou, low, score, ptrs = tr.decode(pix, self.arrays, coords, labels, masks, has_mask)
        lo, hi = tr.multimask_pts
        multimask = lo <= points <= hi  # tracking is multimask too (`multimask_output_for_tracking`)
        rows = []
        for b in range(len(iou)):
            if multimask:
                token = 1 + int(np.argmax(iou[b, 1:]))
                ptr_token = token
            else:
                token = int(t.single_mask_tokens(iou[b:b + 1], low[b:b + 1])[0])
                ptr_token = 0  # the single-mask token is the object's pointer, whichever mask answers
            s = float(score[b])
            mask = low[b, token] if s > 0 else np.full_like(low[b, token], NO_OBJ_SCORE)
            rows.append((mask, s, float(iou[b, token]), self._gate_pointer(ptrs[b, ptr_token], s)))
        return rows

    def _fill(self, low: np.ndarray) -> np.ndarray:
        """The video predictor's `fill_holes_in_mask_scores`: background regions of at most `fill_hole_area`
        low-res cells (8-connected) become 0.1."""
        area = self.tracker.fill_hole_area
        if area <= 0:
            return low
        import cv2

        n, labels, stats, _ = cv2.connectedComponentsWithStats((low <= 0).astype(np.uint8), connectivity=8)
        small = stats[:, cv2.CC_STAT_AREA] <= area
        small[0] = False
        holes = small[labels]
        return np.where(holes, np.float32(0.1), low).astype(np.float32) if holes.any() else low

    def _encode_pending(self) -> None:
        """Memories of the current frame's prompted outputs, as `propagate_in_video_preflight` encodes them."""
        if self.arrays is None:
            return
        f = self.frame
        todo = [(i, o) for i, obj in self.objects.items() if (o := obj.outputs.get(f)) is not None
                and o.maskmem is None]
        if not todo:
            return
        mem = self.tracker.encode_memory(self._raw(), np.stack([o.low_res for _, o in todo]),
                                         [o.score for _, o in todo], np.ones(len(todo)))
        for (_, o), m in zip(todo, mem):
            o.maskmem = m

    def _prune(self) -> None:
        """Drop what attention can no longer read: outputs older than the pointer window, unless they are
        conditioning frames still selected; memories older than the memory window; old low-res masks."""
        tr, f = self.tracker, self.frame
        # What this frame's corrections and the next frame read: pointers of the last max_obj_ptrs - 1 frames;
        # memories of the frame before and num_maskmem - 2 more, every `stride`-th (f - 1 - stride·(M - 2) is
        # the oldest a correction here reads).
        keep_ptr = tr.max_obj_ptrs
        keep_mem = tr.stride * (tr.num_maskmem - 2) + 2
        for obj in self.objects.values():
            selected = set(self._selected_cond(obj, f + 1)[0])
            for t_ in list(obj.outputs):
                o = obj.outputs[t_]
                if t_ not in selected:
                    if f - t_ >= max(keep_ptr, keep_mem):
                        del obj.outputs[t_]
                        continue
                    if f - t_ >= keep_mem:
                        o.maskmem = None
                if t_ != f:
                    o.low_res = None
