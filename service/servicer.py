"""The decoder service's world, handed in by its caller: the model, the embedding store, the decoding pools,
refinement and the quotas. The RPCs (`rpcs/`, one module each) are told their stories against it; nothing
here opens a connection or reads the environment, so a test builds a `Segmenter` from parts of its choosing.
"""

from __future__ import annotations

import asyncio
import contextvars
from concurrent.futures import Executor

from maskserve.engines import families, prompts as prompt_lib

from . import quotas as quotas_, refinement
from .access import Caller
from .config import Settings
from .decoding import Decoding, to_prompt
from .embeddings import Embeddings
from .proto import pb


class Segmenter:
    def __init__(self, settings: Settings, manifest, embeddings: Embeddings, decoding: Decoding,
                 refinements: refinement.Refinements, pool: Executor, everything_pool: Executor,
                 quotas: quotas_.Local, sessions=None, tracking_pool: Executor | None = None) -> None:
        self.settings, self.manifest = settings, manifest
        self.family = families.of(manifest)
        self.version = manifest.model_version
        self.embeddings, self.decoding, self.refinements = embeddings, decoding, refinements
        self.pool = pool  # prompts' decoder runs
        self.everything_pool = everything_pool  # SegmentEverything's, SAM 3's concepts: prompts never wait behind
        self.quotas = quotas  # this replica's rate and streams per tenant (a stream's messages take from the rate)
        self.sessions = sessions  # video tracking sessions (service/tracking.py)
        self.tracking_pool = tracking_pool  # tracking steps: SegmentPrompt never waits behind a frame

    async def segment(self, caller: Caller, image_id: str, proto_prompts, options) -> list:
        """Prompts on one stored image → PromptResults, each with the handle a later prompt refines it by."""
        if not proto_prompts:
            raise prompt_lib.PromptError("no prompts: give at least one prompt with a point or a box")
        if len(proto_prompts) > self.settings.max_prompts:
            raise prompt_lib.PromptError(f"{len(proto_prompts)} prompts in one call; at most "
                                         f"{self.settings.max_prompts} are allowed")
        ref, emb = await self.embeddings.require(caller, image_id)
        budget = [refinement.MAX_REMAKE]  # decoder runs this call may spend making expired logits again
        prompts = [await self._prompt(ref, image_id, emb, i, p, budget) for i, p in enumerate(proto_prompts)]
        refining = any(p.HasField("mask_from") for p in proto_prompts)
        results, answers = await asyncio.get_running_loop().run_in_executor(  # in this call's context: its
            self.pool, contextvars.copy_context().run, self.decoding.answer, emb, prompts, options,  # spans nest
            options.return_low_res_logits or refining)
        for p, result, answer in zip(proto_prompts, results, answers):
            result.logits_handle = await self.refinements.handle(ref, image_id, p, options.single_mask)
            if p.HasField("mask_from"):  # an interactive loop: its next click will refine this answer
                self.refinements.keep(ref, result.logits_handle, answer.low_res_logits)
        return results

    async def _prompt(self, ref: str, image_id: str, emb, i: int, p: pb.Prompt, budget: list[int]) -> prompt_lib.Prompt:
        """A request's i-th prompt, its `mask_from` handle resolved to logits; errors name prompts[i]."""
        try:
            prompt = to_prompt(p)
            if p.HasField("mask_from"):
                if p.HasField("mask_input"):
                    raise prompt_lib.PromptError("give a prompt mask_input or mask_from, not both", "mask_from")

                def make(recipe_prompt, multimask):
                    return asyncio.get_running_loop().run_in_executor(
                        self.pool, self.decoding.logits, emb, recipe_prompt, multimask)
                prompt.mask_input = await self.refinements.resolve(ref, image_id, p.mask_from, make, to_prompt,
                                                                   budget)
            return prompt
        except prompt_lib.PromptError as exc:
            exc.field = f"prompts[{i}]" + (f".{exc.field}" if exc.field else "")
            raise
