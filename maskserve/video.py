"""`maskserve.VideoTracker`: SAM 2.1 video tracking with `SAM2VideoPredictor`'s verbs, one frame at a time —
in process on a model directory, or over a `Client` (the `TrackObjects` stream, whose session survives its
replica). `track(frame)` is the step the reference has no name for: the next frame, every object's mask on it;
prompts apply to the current frame; `propagate_in_video(video)` runs a file or a folder of frames.

Every verb returns what the reference's do: `(frame_idx, obj_ids, masks)`, masks (objects, H, W) bool.
"""

from __future__ import annotations

import queue
import threading
from pathlib import Path
from typing import Iterator

import numpy as np

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm")
FRAME_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


def read_frames(video: str | Path) -> Iterator[np.ndarray]:
    """(H, W, 3) uint8 RGB frames of a video file (OpenCV) or a folder of images (sorted by name)."""
    video = Path(video)
    if video.is_dir():
        from PIL import Image

        files = sorted(p for p in video.iterdir() if p.suffix.lower() in FRAME_SUFFIXES)
        if not files:
            raise ValueError(f"{video}: no image files ({', '.join(FRAME_SUFFIXES)})")
        for p in files:
            yield np.asarray(Image.open(p).convert("RGB"))
        return
    import cv2

    capture = cv2.VideoCapture(str(video))
    if not capture.isOpened():
        raise ValueError(f"{video}: not a video OpenCV can read")
    try:
        while True:
            ok, frame = capture.read()
            if not ok:
                return
            yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
    finally:
        capture.release()


def count_frames(video: str | Path) -> int | None:
    video = Path(video)
    if video.is_dir():
        return sum(p.suffix.lower() in FRAME_SUFFIXES for p in video.iterdir())
    import cv2

    capture = cv2.VideoCapture(str(video))
    n = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    capture.release()
    return n if n > 0 else None


class VideoTracker:
    """`VideoTracker(model_dir)` tracks in this process; `VideoTracker(client)` over a running service
    (`session_id` resumes a session). Each verb waits for its answer; a live source that sends frames without
    waiting and skips to the newest uses the `TrackObjects` stream itself (`TrackStart.drop_stale_frames`).
    `expected_frames`: a video's exact length, as the reference knows it; unset for a stream."""

    def __init__(self, target=None, *, expected_frames: int | None = None, session_id: str = "",
                 threads: int | None = None) -> None:
        from maskserve.client import Client

        if isinstance(target, Client):
            self._impl = _Remote(target, expected_frames, session_id)
        else:
            self._impl = _Local(target, expected_frames, threads)

    @property
    def session_id(self) -> str:
        return self._impl.session_id

    @property
    def frame_idx(self) -> int:
        return self._impl.frame_idx

    def track(self, frame: np.ndarray) -> tuple[int, list[int], np.ndarray]:
        """The next frame ((H, W, 3) uint8 RGB): every object tracked on it."""
        return self._impl.track(frame)

    def add_new_points_or_box(self, obj_id: int, points=None, labels=None, clear_old_points: bool = True,
                              box=None) -> tuple[int, list[int], np.ndarray]:
        """Points (x, y pixels; labels 1/0) and/or a box on the current frame, for a new object or to correct one
        (`clear_old_points=False` adds to its clicks on this frame)."""
        return self._impl.prompt(obj_id, points, labels, box, None, clear_old_points)

    def add_new_mask(self, obj_id: int, mask) -> tuple[int, list[int], np.ndarray]:
        return self._impl.prompt(obj_id, None, None, None, np.asarray(mask, bool), True)

    def remove_object(self, obj_id: int) -> tuple[list[int], list]:
        self._impl.remove(obj_id)
        return self._impl.object_ids(), []

    def reset_state(self) -> None:
        self._impl.reset()

    def propagate_in_video(self, video: str | Path, start_frame_idx: int = 0,
                           max_frame_num_to_track: int | None = None) -> Iterator[tuple[int, list[int], np.ndarray]]:
        """Each frame of a video file or a folder of frames, tracked: `(frame_idx, obj_ids, masks)`. Prompt
        objects between steps (they apply to the frame just yielded), as after the reference's
        `add_new_points_or_box` on a frame before propagating from it."""
        for n, frame in enumerate(read_frames(video)):
            if n < start_frame_idx:
                continue
            if max_frame_num_to_track is not None and n > start_frame_idx + max_frame_num_to_track:
                return
            yield self.track(frame)

    def close(self) -> None:
        self._impl.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class _Local:
    def __init__(self, model_dir, expected_frames, threads) -> None:
        from maskserve.engines.model_dir import Manifest
        from maskserve.engines.predictor import Predictor
        from maskserve.engines.tracking import Tracker
        from maskserve import engines

        model_dir = engines.resolve(model_dir)
        self.predictor = Predictor(model_dir, threads=threads)
        self.tracker = Tracker(model_dir, Manifest.load(model_dir), threads=threads)
        self.expected_frames = expected_frames
        self.session = None
        self.session_id = ""

    @property
    def frame_idx(self) -> int:
        return -1 if self.session is None else self.session.frame

    def _answer(self, results):
        return self.session.frame, [r.object_id for r in results], self.session.masks(results)

    def track(self, frame):
        frame = np.asarray(frame)
        if self.session is None:
            self.session = self.tracker.session(frame.shape[:2], self.expected_frames)
        elif frame.shape[:2] != self.session.original_size:
            raise ValueError(f"frame of {frame.shape[1]}x{frame.shape[0]}; this video's frames are "
                             f"{self.session.original_size[1]}x{self.session.original_size[0]}")
        self.predictor.set_image(frame)
        return self._answer(self.session.track(self.predictor.get_image_arrays()))

    def _need(self):
        if self.session is None:
            raise ValueError("no frame yet: track a frame before prompting objects")
        return self.session

    def prompt(self, obj_id, points, labels, box, mask, clear):
        s = self._need()
        if mask is not None:
            return self._answer(s.add_mask(obj_id, mask))
        return self._answer(s.add_points(obj_id, points, labels, box, clear_old_points=clear))

    def remove(self, obj_id):
        self._need().remove_object(obj_id)

    def object_ids(self):
        return [] if self.session is None else sorted(self.session.objects)

    def reset(self):
        if self.session is not None:
            self.session.reset()

    def close(self):
        pass


class _Remote:
    """One TrackObjects stream: each verb sends a message and waits for its answer."""

    def __init__(self, client, expected_frames, session_id) -> None:
        from maskserve.client import messages
        from maskserve.v1 import maskserve_pb2 as pb

        self.pb, self.messages, self.client = pb, messages, client
        self.outbox: queue.Queue = queue.Queue()
        self.sequence = 0
        self.lock = threading.Lock()

        def requests():
            while (req := self.outbox.get()) is not None:
                yield req
        self.responses = client.stub.TrackObjects(requests(), metadata=client.metadata)
        start = pb.TrackStart(session_id=session_id, mask_format=pb.MASK_FORMAT_BITMAP,
                              expected_frames=expected_frames or 0)
        reply = self._call(start=start).session
        self.session_id, self.frame_idx, self._ids = reply.session_id, reply.frame_index, list(reply.object_ids)

    def _call(self, **item):
        from maskserve.client.errors import from_rpc_error
        import grpc

        with self.lock:
            self.sequence += 1
            self.outbox.put(self.pb.TrackRequest(sequence=self.sequence, **item))
            try:
                reply = next(self.responses)
            except grpc.RpcError as exc:
                raise from_rpc_error(exc) from None
        if reply.WhichOneof("outcome") == "error":
            raise _stream_error(reply.error)
        return reply

    def _answer(self, reply):
        frame = reply.frame
        self.frame_idx = frame.frame_index
        self._ids = [o.object_id for o in frame.objects]
        masks = [self.messages.decode_mask(o.mask).astype(bool) for o in frame.objects]
        self.last = frame
        h, w = (frame.objects[0].mask.height, frame.objects[0].mask.width) if frame.objects else (0, 0)
        return frame.frame_index, self._ids, np.stack(masks) if masks else np.zeros((0, h, w), bool)

    def track(self, frame):
        return self._answer(self._call(frame=self.messages.image_message(np.asarray(frame))))

    def prompt(self, obj_id, points, labels, box, mask, clear):
        pb = self.pb
        p = pb.ObjectPrompt(object_id=int(obj_id))
        if points is not None:
            for (x, y), label in zip(np.asarray(points, float).reshape(-1, 2), np.asarray(labels).reshape(-1)):
                p.points.add(x=float(x), y=float(y), label=int(label))
        if box is not None:
            x0, y0, x1, y1 = (float(v) for v in np.asarray(box, float).reshape(4))
            p.box.x0, p.box.y0, p.box.x1, p.box.y1 = x0, y0, x1, y1
        if mask is not None:
            p.mask.height, p.mask.width = mask.shape
            p.mask.bitmap = np.packbits(mask, axis=None).tobytes()
        p.replace_points = bool(clear)
        kind = "add_object" if obj_id not in self._ids else "correct_object"
        return self._answer(self._call(**{kind: p}))

    def remove(self, obj_id):
        self._answer(self._call(remove_object=int(obj_id)))

    def object_ids(self):
        return list(self._ids)

    def reset(self):
        self._answer(self._call(reset=True))

    def close(self):
        self.outbox.put(None)
        try:
            for _ in self.responses:
                pass
        except Exception:  # noqa: BLE001 - closing: the stream's end is all we wait for
            pass


def _stream_error(error):
    import grpc

    from maskserve.client import errors

    code = next((c for c in grpc.StatusCode if c.value[0] == error.code), grpc.StatusCode.UNKNOWN)
    cls = errors._CLASSES.get(code, errors.MaskserveError)
    return cls(code, error.message, retry_after_s=error.retry_after_ms / 1000 if error.retry_after_ms else None)
