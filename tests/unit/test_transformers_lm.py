"""The transformers engine driven directly in asyncio: the padded decoding batch giving each
sequence what it would get alone, seeded sampling, a bounded queue, a closed iterator freeing its
slot, and unloading mid-sequence."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from typing import cast

os.environ.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})

import pytest

from shipyard.errors import InvalidInputError, OverloadedError
from shipyard.registry import Registry
from shipyard.runtimes import load_generator
from shipyard.runtimes.generation import GenerationChunk, GenerationEngine, GenerationRequest, SamplingParams
from shipyard.settings import GenerationSettings, Settings
from tiny_lm import tiny_lm_folder

pytest.importorskip("torch")
pytest.importorskip("transformers")

LONG = SamplingParams(max_tokens=900, ignore_eos=True)  # seconds of decoding: outlives any check


@pytest.fixture(scope="module")
def pushed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, Registry]]:
    home = tmp_path_factory.mktemp("engine-home")
    settings = Settings.load(home=home)
    with Registry(settings=settings) as registry:
        registry.push("tiny", tiny_lm_folder(home / "src"))
        yield settings, registry


def engine(pushed: tuple[Settings, Registry], **generation: int) -> GenerationEngine:
    settings, registry = pushed
    version = registry.resolve("tiny")
    options = GenerationSettings(threads=1, **generation)
    return load_generator(version, registry.artifact_path(version), settings.runtime, options)


async def collect(stream: AsyncIterator[GenerationChunk]) -> list[GenerationChunk]:
    return [chunk async for chunk in stream]


def test_a_seeded_sequence_is_the_same_alone_or_beside_others(pushed: tuple[Settings, Registry]) -> None:
    lm = engine(pushed, slots=4)
    seeded = GenerationRequest("the quick", SamplingParams(max_tokens=24, seed=5, temperature=1.0))

    async def main() -> None:
        alone = await collect(lm.generate(seeded))
        others = [GenerationRequest("a model", SamplingParams(max_tokens=24, seed=s)) for s in range(3)]
        together = await asyncio.gather(*(collect(lm.generate(r)) for r in [seeded, *others]))
        assert [c.token_ids for c in together[0]] == [c.token_ids for c in alone]
        assert alone[-1].finish_reason in ("stop", "length") and alone[-1].prompt_tokens > 0

    try:
        asyncio.run(main())
    finally:
        lm.close()


def test_sequences_of_different_lengths_decode_in_one_batch_as_they_would_alone(
    pushed: tuple[Settings, Registry],
) -> None:
    lm = engine(pushed, slots=4, prompt_chunk_tokens=16)  # the long prompt goes in three chunks
    prompts = ["hi", "the quick brown fox jumps over the lazy dog " * 3, "a model", "hello world, hello"]

    async def greedy(prompt: str, delay: float = 0.0) -> list[tuple[int, ...]]:
        await asyncio.sleep(delay)  # joins while the others decode
        request = GenerationRequest(prompt, SamplingParams(max_tokens=24, temperature=0, ignore_eos=True))
        return [c.token_ids for c in await collect(lm.generate(request))]

    async def main() -> None:
        alone = [await greedy(p) for p in prompts]
        together = await asyncio.gather(*(greedy(p) for p in prompts))
        staggered = await asyncio.gather(*(greedy(p, i * 0.005) for i, p in enumerate(prompts)))
        assert together == alone and staggered == alone

    try:
        asyncio.run(main())
    finally:
        lm.close()


def test_the_queue_is_bounded_and_a_closed_stream_frees_its_slot(pushed: tuple[Settings, Registry]) -> None:
    lm = engine(pushed, slots=1, max_queue=1)

    async def main() -> None:
        # An async generator, as the engines are: closing it is what a departing client does.
        running = cast(AsyncGenerator[GenerationChunk], lm.generate(GenerationRequest("hello", LONG)))
        await anext(running)  # in the only slot now
        waiting = lm.generate(GenerationRequest("hello", SamplingParams(max_tokens=3)))
        waited = asyncio.ensure_future(collect(waiting))
        while lm.stats().waiting == 0:  # admitted on its first step
            await asyncio.sleep(0)
        with pytest.raises(OverloadedError):
            await anext(lm.generate(GenerationRequest("hello", SamplingParams(max_tokens=3))))
        assert lm.stats().running == 1
        await running.aclose()  # the client went away: the waiting request gets the slot
        chunks = await asyncio.wait_for(waited, 30)
        assert chunks[-1].finish_reason in ("stop", "length")

    try:
        asyncio.run(main())
    finally:
        lm.close()


def test_unloading_ends_running_sequences_with_an_error(pushed: tuple[Settings, Registry]) -> None:
    lm = engine(pushed, slots=1)

    async def main() -> None:
        stream = lm.generate(GenerationRequest("hello", LONG))
        await anext(stream)
        await asyncio.to_thread(lm.close)
        rest = await collect(stream)
        assert rest[-1].finish_reason == "error" and rest[-1].error == "the model was unloaded"

    asyncio.run(main())


def test_prompt_over_the_context_is_refused(pushed: tuple[Settings, Registry]) -> None:
    lm = engine(pushed, context_per_slot=64)
    try:
        assert lm.max_context == 64
        with pytest.raises(InvalidInputError, match="at most 64 tokens"):
            asyncio.run(collect(lm.generate(GenerationRequest("word " * 100, SamplingParams(max_tokens=1)))))
    finally:
        lm.close()
