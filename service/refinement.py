"""Refinement by reference: a later prompt names an earlier answer's low-res logits by a handle instead of the
client shipping 256 KB per mask back and forth.

A handle is the answer's recipe (image, prompt, one mask or three), so any replica can make the logits again
from the embedding: nothing has to be kept for a handle to work, and it works as long as its image's embedding
does. Made logits are kept a short while (this process's LRU, then Redis under a TTL), keyed by the tenant's
image ref and the handle's hash. A prompt that refines keeps its own answer's logits as it is made, so in an
interactive loop every click finds the previous answer's logits ready; only the first refinement of a plain
answer makes them (one decoder run), and a plain answer costs nothing extra.
"""

from __future__ import annotations

import hashlib

import numpy as np
from google.protobuf.message import DecodeError

from maskserve.engines.prompts import PromptError

from . import jobs, store
from .proto import pb

MAX_DEPTH = 64  # prompts made again in a row when nothing on a refinement chain is kept any more


class HandleExpired(LookupError):
    """NOT_FOUND: the handle's logits are gone and cannot be made again."""


def handle(image_id: str, prompt, single_mask: bool) -> bytes:
    """The handle of the answer to `prompt` (a proto Prompt); empty when the prompt carried mask_input data."""
    if prompt.HasField("mask_input"):
        return b""
    return pb.LogitsRecipe(image_id=image_id, prompt=prompt, single_mask=single_mask).SerializeToString()


class Refinements:
    def __init__(self, redis, model_version: str, ttl_s: int, entries: int) -> None:
        self.redis, self.version, self.ttl_s = redis, model_version, ttl_s
        self.lru = store.LRU(entries)

    def key(self, ref: str, handle_: bytes) -> str:
        return f"logits:{self.version}:{ref}:{hashlib.sha256(handle_).hexdigest()[:32]}"

    async def get(self, ref: str, handle_: bytes) -> np.ndarray | None:
        k = self.key(ref, handle_)
        found = self.lru.get(k)
        if found is None:
            blob = await self.redis.get(k)
            if blob is not None:
                (side,) = np.frombuffer(blob[:4], "<u4")
                found = np.frombuffer(blob, "<f4", offset=4).reshape(-1, side, side)
                self.lru.put(k, found, owner=jobs.tenant_of(ref))
        return found

    async def keep(self, ref: str, handle_: bytes, logits: np.ndarray) -> None:
        k = self.key(ref, handle_)
        logits = np.ascontiguousarray(logits, "<f4")
        self.lru.put(k, logits, owner=jobs.tenant_of(ref))
        await self.redis.set(k, np.uint32(logits.shape[-1]).tobytes() + logits.tobytes(), ex=self.ttl_s)

    async def resolve(self, ref: str, image_id: str, mask_from, make, to_prompt, depth: int = 0) -> np.ndarray:
        """The (1, M, M) mask input `mask_from` names. `make(prompt, multimask)` runs the decoder (full logits);
        `to_prompt` turns a proto Prompt into the decoder's."""
        try:
            recipe = pb.LogitsRecipe.FromString(mask_from.handle)
        except DecodeError:
            recipe = None
        if recipe is None or not recipe.image_id:
            raise PromptError("mask_from.handle is not a handle this service gave (use a PromptResult's "
                              "logits_handle)", "mask_from.handle")
        if recipe.image_id != image_id:
            raise PromptError(f"mask_from.handle belongs to image {recipe.image_id!r}, not to {image_id!r}",
                              "mask_from.handle")
        logits = await self.get(ref, mask_from.handle)
        if logits is None:
            if depth >= MAX_DEPTH:
                raise HandleExpired(f"the logits behind this handle expired, and its refinement chain is too long "
                                    f"(over {MAX_DEPTH}) to make again; send the mask input as data")
            prompt = to_prompt(recipe.prompt)
            if recipe.prompt.HasField("mask_from"):
                prompt.mask_input = await self.resolve(ref, image_id, recipe.prompt.mask_from, make, to_prompt,
                                                       depth + 1)
            logits = await make(prompt, not recipe.single_mask)
            await self.keep(ref, mask_from.handle, logits)
        if mask_from.output_index >= len(logits):
            raise PromptError(f"mask_from.output_index {mask_from.output_index}: that answer has {len(logits)} masks",
                              "mask_from.output_index")
        return logits[mask_from.output_index][None]
