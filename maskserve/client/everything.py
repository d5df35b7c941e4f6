"""SegmentEverything on the wire, the client's side: generator options out, mask pages back into a MaskSet.
The service's side (options in, pages out) is `maskserve.service.everything`."""

from __future__ import annotations

from dataclasses import fields

import numpy as np

from maskserve.engines.automatic import MaskSet, Options
from maskserve.v1 import maskserve_pb2 as pb

# The options that travel as AutomaticOptions' scalar fields of the same names (both sides read this list).
SCALAR_OPTIONS = [f.name for f in fields(Options) if f.name not in ("point_grids", "output_mode")]


def options_to_proto(o: Options) -> pb.AutomaticOptions:
    msg = pb.AutomaticOptions()
    for name in SCALAR_OPTIONS:
        if getattr(o, name) is not None:
            setattr(msg, name, getattr(o, name))
    for grid in o.point_grids or []:
        msg.point_grids.add(xy=np.asarray(grid, np.float64).reshape(-1).tolist())
    return msg


def from_pages(pages_in) -> tuple[MaskSet, pb.EverythingMasks]:
    """Pages back into a MaskSet (the reference's fields; float32 scores as sent); also the last page."""
    rles, boxes, ious, stab, points, crops = [], [], [], [], [], []
    last = None
    for page in pages_in:
        for m in page.masks:
            rles.append(m.segmentation.counts)
            boxes.append((m.bbox.x, m.bbox.y, m.bbox.x + m.bbox.width, m.bbox.y + m.bbox.height))
            ious.append(m.predicted_iou)
            stab.append(m.stability_score)
            points.append((m.point_x, m.point_y))
            crops.append((m.crop_box.x, m.crop_box.y, m.crop_box.x + m.crop_box.width,
                          m.crop_box.y + m.crop_box.height))
        last = page
    if last is None or not last.last:
        raise ConnectionError("the SegmentEverything answer ended before its last page")
    n = len(rles)
    return MaskSet((last.height, last.width), rles, np.array(boxes, np.int64).reshape(n, 4),
                   np.array(ious, np.float32), np.array(stab, np.float32),
                   np.array(points, np.float64).reshape(n, 2), np.array(crops, np.int64).reshape(n, 4),
                   dict(last.filtered)), last
