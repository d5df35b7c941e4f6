"""Refinement by reference: a later prompt names an earlier answer's low-res logits by a handle instead of the
client shipping 256 KB per mask back and forth.

A handle is the answer's recipe (image, prompt, one mask or three) signed for its tenant, so any replica can
make the logits again from the embedding and nobody can make a handle the service did not give. Made logits
are kept only in this process (a bounded LRU that evicts from the tenant holding the most), never in the
shared cache: the only bytes a tenant can make the service store are its embeddings, which its quota counts.
A prompt that refines keeps its own answer's logits as it is made, so in an interactive loop every click
finds the previous answer's logits ready; only a handle used on another replica (or after its logits left
the LRU) is made again, level by level from the chain's root, and that work is bounded per call:
`MAX_REMAKE` decoder runs, and a chain longer than that is cut (its handle then works only while its logits
are kept; after that the client sends the mask input as data).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

import numpy as np
from google.protobuf.message import DecodeError

from maskserve.engines.prompts import PromptError
from maskserve.v1 import internal_pb2

from . import keys, metrics, store
from .proto import pb

MAX_REMAKE = 16  # decoder runs one call may spend making expired logits again (all its prompts together)
MAC_BYTES = 16
CUT = b"#"  # a recipe's mask_from.handle that is CUT + sha256(handle): a chain too long to make again


class HandleExpired(LookupError):
    """NOT_FOUND: the handle's logits are gone and cannot be made again within a call's bounds."""


def _not_ours() -> PromptError:
    return PromptError("mask_from.handle is not a handle this service gave this tenant (use a PromptResult's "
                       "logits_handle)", "mask_from.handle")


class Refinements:
    def __init__(self, queue_redis, entries: int) -> None:
        self.redis = queue_redis
        self.lru = store.LRU(entries)
        self._key: bytes | None = None

    async def _signing_key(self) -> bytes:
        """The deployment's handle key: made once by whichever replica comes first, then shared."""
        if self._key is None:
            await self.redis.set(keys.HANDLE_KEY, secrets.token_bytes(32), nx=True)
            self._key = await self.redis.get(keys.HANDLE_KEY)
        return self._key

    def _mac(self, key: bytes, ref: str, recipe: bytes) -> bytes:
        tenant = keys.tenant_of(ref).encode()
        return hmac.new(key, len(tenant).to_bytes(2, "big") + tenant + recipe, hashlib.sha256).digest()[:MAC_BYTES]

    async def handle(self, ref: str, image_id: str, prompt, single_mask: bool) -> bytes:
        """The handle of the answer to `prompt` (a proto Prompt whose mask_from, if any, was resolved already);
        empty when the prompt carried mask_input data."""
        if prompt.HasField("mask_from"):
            if self.levels(prompt.mask_from.handle) >= MAX_REMAKE:  # too long to make again: keep its name only
                prompt = pb.Prompt.FromString(prompt.SerializeToString())
                prompt.mask_from.handle = CUT + hashlib.sha256(prompt.mask_from.handle).digest()
        elif prompt.HasField("mask_input"):
            return b""
        recipe = internal_pb2.LogitsRecipe(image_id=image_id, prompt=prompt, single_mask=single_mask).SerializeToString()
        return recipe + self._mac(await self._signing_key(), ref, recipe)

    @staticmethod
    def _recipe(handle_: bytes) -> internal_pb2.LogitsRecipe:
        return internal_pb2.LogitsRecipe.FromString(handle_[:-MAC_BYTES])

    @classmethod
    def levels(cls, handle_: bytes) -> int:
        """Decoder runs that make this handle's logits from nothing (a cut chain: more than anyone may spend).
        Only for handles already verified."""
        n = 0
        while True:
            n += 1
            prompt = cls._recipe(handle_).prompt
            if not prompt.HasField("mask_from"):
                return n
            handle_ = prompt.mask_from.handle
            if handle_.startswith(CUT):
                return MAX_REMAKE + 1

    async def verify(self, ref: str, image_id: str, handle_: bytes) -> internal_pb2.LogitsRecipe:
        """The handle's recipe, if this service gave the handle to this tenant for this image."""
        if len(handle_) <= MAC_BYTES or not hmac.compare_digest(
                handle_[-MAC_BYTES:], self._mac(await self._signing_key(), ref, handle_[:-MAC_BYTES])):
            raise _not_ours()
        try:
            recipe = self._recipe(handle_)
        except DecodeError:
            raise _not_ours() from None
        if recipe.image_id != image_id:
            raise PromptError(f"mask_from.handle belongs to image {recipe.image_id!r}, not to {image_id!r}",
                              "mask_from.handle")
        return recipe

    def _lru_key(self, ref: str, handle_: bytes) -> str:
        return f"{ref}:{hashlib.sha256(handle_).hexdigest()[:32]}"

    def keep(self, ref: str, handle_: bytes, logits: np.ndarray) -> None:
        self.lru.put(self._lru_key(ref, handle_), np.ascontiguousarray(logits, np.float32),
                     owner=keys.tenant_of(ref))

    async def resolve(self, ref: str, image_id: str, mask_from, make, to_prompt, budget: list[int]) -> np.ndarray:
        """The (1, M, M) mask input `mask_from` names. `make(prompt, multimask)` runs the decoder (full logits);
        `to_prompt` turns a proto Prompt into the decoder's; `budget` ([runs left]) is shared by a call's
        prompts and spent as logits are made again."""
        recipe = await self.verify(ref, image_id, mask_from.handle)
        logits = self.lru.get(self._lru_key(ref, mask_from.handle))
        if logits is None:
            needed = self.levels(mask_from.handle)
            if needed > budget[0]:
                raise HandleExpired(
                    "the logits behind this handle are no longer kept on this replica, and making them again "
                    f"takes {'a chain longer than ' + str(MAX_REMAKE) if needed > MAX_REMAKE else str(needed)} "
                    f"decoder runs (a call may spend {MAX_REMAKE}); send the mask input as data")
            logits = await self._remake(ref, recipe, make, to_prompt, budget)
            self.keep(ref, mask_from.handle, logits)
        if mask_from.output_index >= len(logits):
            raise PromptError(f"mask_from.output_index {mask_from.output_index}: that answer has {len(logits)} masks",
                              "mask_from.output_index")
        return logits[mask_from.output_index][None]

    async def _remake(self, ref: str, recipe: internal_pb2.LogitsRecipe, make, to_prompt, budget: list[int]) -> np.ndarray:
        """The recipe's logits, its chain made from the root (inner levels are not kept: only the one asked for)."""
        prompt = to_prompt(recipe.prompt)
        if recipe.prompt.HasField("mask_from"):
            inner = recipe.prompt.mask_from
            logits = self.lru.get(self._lru_key(ref, inner.handle))
            if logits is None:
                logits = await self._remake(ref, self._recipe(inner.handle), make, to_prompt, budget)
            prompt.mask_input = logits[inner.output_index][None]
        budget[0] -= 1
        metrics.REFINEMENT_REMAKES.inc()
        return await make(prompt, not recipe.single_mask)
