"""SegmentEverything on the wire, the service's side: generator options in, mask pages out. The client's
side (options out, pages back into a MaskSet) is `maskserve.client.everything`."""

from __future__ import annotations

import numpy as np

from maskserve.client.everything import SCALAR_OPTIONS
from maskserve.engines.automatic import MaskSet, Options, ParameterError
from maskserve.engines.masks import rle_area

from .proto import pb

PAGE_BYTES = 2 * 2**20  # RLE bytes per page: well under any message limit, few pages for a typical answer


def options_from_proto(msg: pb.AutomaticOptions) -> Options:
    """Unset fields take the reference's defaults; validation is the caller's (`Options.validate`)."""
    values = {name: getattr(msg, name) for name in SCALAR_OPTIONS if msg.HasField(name)}
    if msg.point_grids:
        grids = []
        for g in msg.point_grids:
            if len(g.xy) % 2:
                raise ParameterError("point_grids", f"a grid's xy holds x, y pairs; got {len(g.xy)} numbers")
            grids.append(np.array(g.xy, np.float64).reshape(-1, 2))
        values["point_grids"] = grids
        values.setdefault("points_per_side", None)
    return Options(**values)


def pages(found: MaskSet, image_id: str, model_version: str, stage_seconds: dict[str, float],
          page_bytes: int = PAGE_BYTES):
    """The answer as EverythingMasks pages of at most about `page_bytes` of RLE each; the last one says so."""
    h, w = found.image_size
    page = pb.EverythingMasks(image_id=image_id, model_version=model_version, width=w, height=h)
    size = 0
    for i, counts in enumerate(found.rles):
        if size + len(counts) > page_bytes and page.masks:
            yield page
            page = pb.EverythingMasks(image_id=image_id, model_version=model_version, width=w, height=h)
            size = 0
        x0, y0, x1, y1 = (int(v) for v in found.boxes[i])
        cx0, cy0, cx1, cy1 = (int(v) for v in found.crop_boxes[i])
        m = page.masks.add(area=rle_area({"size": [h, w], "counts": counts}), predicted_iou=found.iou_preds[i],
                           stability_score=found.stability[i], point_x=found.points[i][0],
                           point_y=found.points[i][1])
        m.segmentation.counts = counts
        m.bbox.x, m.bbox.y, m.bbox.width, m.bbox.height = x0, y0, x1 - x0, y1 - y0
        m.crop_box.x, m.crop_box.y, m.crop_box.width, m.crop_box.height = cx0, cy0, cx1 - cx0, cy1 - cy0
        size += len(counts)
    page.last = True
    page.total_masks = len(found)
    page.stage_seconds.update(stage_seconds)
    page.filtered.update(found.filtered)
    yield page
