"""GetEmbedding: one of the caller's stored embeddings, float16, for a client that decodes prompts itself: the
arrays the prompt decoder reads (SAM 3's: not its detector's feature pyramid, 55 MB of the 66)."""

from __future__ import annotations

import numpy as np

from ..proto import pb


async def handle(service, request, call):
    _, emb = await service.embeddings.require(call.caller, request.image_id)  # the caller's tenant's images only
    h, w = emb.original_size
    arrays = [pb.Tensor(name=name, shape=a.shape, float16=np.ascontiguousarray(a, "<f2").tobytes())
              for name, a in emb.arrays.items() if name in service.family.decoder_arrays]
    return pb.Embedding(image_id=request.image_id, model_version=service.version, width=w, height=h, arrays=arrays)
