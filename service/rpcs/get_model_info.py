"""GetModelInfo: what the clients need to know of the served model."""

from __future__ import annotations

from ..proto import pb


async def handle(service, request, call):
    m = service.manifest
    return pb.ModelInfo(model_type=m.model_type, model_version=service.version, backend=m.backend,
                        image_size=m.image_size, low_res_side=m.mask_input_size,
                        max_points=service.settings.max_points, max_prompts=service.settings.max_prompts,
                        family=m.family, capabilities=[*(["track"] if m.tracking else []),
                                                                    *(["concepts"] if m.concepts else [])])
