"""The llama.cpp engine on the real SmolLM2-135M-Instruct: sampling, stops, limits, structured
output and the continuous-batching scheduler (sequences decoded together, slots freed at once)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import jsonschema
import pytest

from shipyard.errors import InvalidInputError, OverloadedError
from shipyard.runtimes.generation import GenerationChunk, GenerationRequest, ResponseFormat, SamplingParams
from shipyard.runtimes.llama_cpp import LlamaCppEngine

QUESTIONS = [
    "What is the capital of France?",
    "Name a primary colour.",
    "What is 2 + 2?",
    "Say hello in Spanish.",
    "What do bees make?",
    "Which planet is closest to the sun?",
    "What colour is the sky on a clear day?",
    "How many legs does a spider have?",
]


def greedy(max_tokens: int = 12, **options: Any) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, temperature=0.0, **options)


def chat(engine: LlamaCppEngine, text: str) -> str:
    return engine.render_chat([{"role": "user", "content": text}])


async def run(
    engine: LlamaCppEngine, prompt: str | tuple[int, ...], params: SamplingParams
) -> list[GenerationChunk]:
    return [chunk async for chunk in engine.generate(GenerationRequest(prompt, params))]


def text_of(chunks: list[GenerationChunk]) -> str:
    return "".join(c.text for c in chunks)


@pytest.fixture(scope="module")
def engine(make_engine: Callable[..., LlamaCppEngine]) -> LlamaCppEngine:
    return make_engine(slots=8)


def test_greedy_decoding_is_deterministic_and_answers(engine: LlamaCppEngine) -> None:
    prompt = chat(engine, QUESTIONS[2])
    first = asyncio.run(run(engine, prompt, greedy(16)))
    second = asyncio.run(run(engine, prompt, greedy(16)))
    assert text_of(first) == text_of(second)
    assert "4" in text_of(first)  # SmolLM2-135M answers 2 + 2 correctly (not every question)
    last = first[-1]
    assert last.finish_reason in ("stop", "length")
    assert all(c.finish_reason is None for c in first[:-1])
    assert last.prompt_tokens == len(engine.tokenize(prompt))
    assert 1 <= last.completion_tokens <= 16


def test_seeded_sampling_is_reproducible(engine: LlamaCppEngine) -> None:
    prompt = chat(engine, "Write a short poem about the sea.")

    def sample(seed: int) -> str:
        params = SamplingParams(max_tokens=16, temperature=1.0, top_p=0.95, top_k=40, seed=seed)
        return text_of(asyncio.run(run(engine, prompt, params)))

    assert sample(7) == sample(7)
    assert len({sample(seed) for seed in (1, 2, 3)}) > 1


def test_concurrent_requests_decode_in_the_same_steps_with_the_same_output(engine: LlamaCppEngine) -> None:
    prompts = [chat(engine, q) for q in QUESTIONS]
    alone = [text_of(asyncio.run(run(engine, p, greedy(12, ignore_eos=True)))) for p in prompts]
    steps_before = engine.steps

    async def together() -> list[list[GenerationChunk]]:
        return list(await asyncio.gather(*(run(engine, p, greedy(12, ignore_eos=True)) for p in prompts)))

    results = asyncio.run(together())
    assert [text_of(r) for r in results] == alone
    assert engine.peak_batch_sequences == len(prompts)  # all eight decoded a token in one step
    # Eight sequences of 12 tokens one after another take 8 x 12 steps; together far fewer.
    assert engine.steps - steps_before < 2 * 12 + len(prompts)
    assert engine.stats().running == 0


def test_prompts_arriving_together_each_answer_in_a_step_of_their_own(
    make_engine: Callable[..., LlamaCppEngine],
) -> None:
    # Without the prefix cache every prompt is ~35 tokens: none is small next to another's, so
    # each gets a step of its own and the first to arrive answers first, not after all four.
    engine = make_engine(slots=4, prefix_cache=False)
    prompts = [chat(engine, q) for q in QUESTIONS[:4]]
    alone = [text_of(asyncio.run(run(engine, p, greedy(1)))) for p in prompts]
    steps_before = engine.steps

    async def together() -> list[list[GenerationChunk]]:
        return list(await asyncio.gather(*(run(engine, p, greedy(1)) for p in prompts)))

    assert [text_of(r) for r in asyncio.run(together())] == alone
    assert engine.steps - steps_before == len(prompts)


def test_a_long_prompt_goes_in_chunks_while_a_running_stream_keeps_decoding(
    make_engine: Callable[..., LlamaCppEngine],
) -> None:
    engine = make_engine(slots=2, prompt_chunk_tokens=16, prefix_cache=False)
    long_prompt = tuple([42] * 200)  # over ten chunks of 16

    async def scenario() -> int:
        running = engine.generate(GenerationRequest(chat(engine, QUESTIONS[0]), greedy(400, ignore_eos=True)))
        received = [(await anext(running)).completion_tokens]

        async def follow() -> None:
            async for chunk in running:
                received.append(chunk.completion_tokens)

        follower = asyncio.create_task(follow())
        before = received[-1]
        chunks = await run(engine, long_prompt, greedy(1))
        assert chunks[-1].completion_tokens == 1
        during = received[-1] - before
        follower.cancel()
        await running.aclose()
        return during

    during = asyncio.run(scenario())
    # At most 16 prompt tokens (and the slot left idle) between two of the running stream's.
    assert during >= 200 // 18 - 1


def test_stop_strings_match_across_token_boundaries(engine: LlamaCppEngine) -> None:
    prompt = chat(engine, QUESTIONS[5])
    full = text_of(asyncio.run(run(engine, prompt, greedy(16))))
    stop = full[12:20]  # "closest " and the like: spans several tokens
    chunks = asyncio.run(run(engine, prompt, greedy(16, stop=(stop, "never appears"))))
    assert text_of(chunks) == full[: full.index(stop)]
    assert chunks[-1].finish_reason == "stop"


def test_max_tokens_ends_with_length(engine: LlamaCppEngine) -> None:
    chunks = asyncio.run(run(engine, chat(engine, QUESTIONS[5]), greedy(3, ignore_eos=True)))
    assert chunks[-1].finish_reason == "length"
    assert chunks[-1].completion_tokens == 3
    assert sum(len(c.token_ids) for c in chunks) == 3


def test_logprobs_are_log_probabilities_with_sorted_alternatives(engine: LlamaCppEngine) -> None:
    chunks = asyncio.run(run(engine, chat(engine, QUESTIONS[2]), greedy(6, logprobs=3)))
    choices = [choice for chunk in chunks for choice in chunk.logprobs]
    assert len(choices) == chunks[-1].completion_tokens
    for choice in choices:
        assert choice.chosen.logprob <= 0
        logprobs = [t.logprob for t in choice.top]
        assert len(logprobs) == 3 and logprobs == sorted(logprobs, reverse=True)
        assert choice.chosen.logprob == pytest.approx(logprobs[0])  # greedy takes the likeliest
        assert bytes(choice.chosen.bytes).decode("utf-8", errors="replace") == choice.chosen.token


def test_json_schema_output_always_validates(engine: LlamaCppEngine) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 20}, "population": {"type": "integer"}},
        "required": ["city", "population"],
        "additionalProperties": False,
    }
    params = greedy(64, response_format=ResponseFormat("json_schema", schema))
    chunks = asyncio.run(run(engine, chat(engine, "Give me a city and its population as JSON."), params))
    assert chunks[-1].finish_reason == "stop"
    jsonschema.validate(json.loads(text_of(chunks)), schema)


def test_json_object_output_parses(engine: LlamaCppEngine) -> None:
    params = SamplingParams(
        max_tokens=96, temperature=0.7, seed=3, response_format=ResponseFormat("json_object")
    )
    chunks = asyncio.run(run(engine, chat(engine, "Describe a cat as a JSON object."), params))
    if chunks[-1].finish_reason == "stop":
        assert isinstance(json.loads(text_of(chunks)), dict)
    else:  # cut by max_tokens: what came so far is still a JSON prefix, never free text
        assert text_of(chunks).lstrip().startswith("{")


def test_a_prompt_longer_than_the_context_is_refused_naming_the_limit(engine: LlamaCppEngine) -> None:
    with pytest.raises(InvalidInputError, match=r"600 tokens.*at most 511") as caught:
        engine.generate(GenerationRequest(tuple([42] * 600), greedy()))
    assert caught.value.field == "prompt"


def test_a_shared_prompt_prefix_is_reused_with_the_same_output(
    make_engine: Callable[..., LlamaCppEngine],
) -> None:
    cached, plain = make_engine(slots=2), make_engine(slots=2, prefix_cache=False)
    system = "You are a terse assistant who answers in one short sentence about geography and science."

    def ask(engine: LlamaCppEngine, question: str) -> str:
        messages = [{"role": "system", "content": system}, {"role": "user", "content": question}]
        return text_of(asyncio.run(run(engine, engine.render_chat(messages), greedy(10))))

    answers = [ask(cached, q) for q in QUESTIONS[:3]]
    assert cached.prefix_tokens_reused > 0
    assert answers == [ask(plain, q) for q in QUESTIONS[:3]]
    assert plain.prefix_tokens_reused == 0


def test_closing_the_stream_mid_way_frees_the_slot(make_engine: Callable[..., LlamaCppEngine]) -> None:
    engine = make_engine(slots=1, prefix_cache=False)
    prompt = chat(engine, QUESTIONS[4])

    async def scenario() -> list[GenerationChunk]:
        stream = engine.generate(GenerationRequest(prompt, greedy(400, ignore_eos=True)))
        first = await anext(stream)
        assert first.finish_reason is None and engine.stats().running == 1
        await stream.aclose()  # the client went away
        # With one slot, this request can only finish if the cancelled one left it.
        return await run(engine, prompt, greedy(4, ignore_eos=True))

    chunks = asyncio.run(scenario())
    assert chunks[-1].finish_reason == "length"
    stats = engine.stats()
    assert (stats.running, stats.waiting, stats.kv_cache_usage) == (0, 0, 0.0)


def test_a_full_queue_is_refused_as_overloaded(make_engine: Callable[..., LlamaCppEngine]) -> None:
    engine = make_engine(slots=1, max_queue=2, prefix_cache=False)
    prompt = chat(engine, QUESTIONS[1])

    async def scenario() -> None:
        running = engine.generate(GenerationRequest(prompt, greedy(400, ignore_eos=True)))
        await anext(running)  # it holds the only slot now
        queued = [engine.generate(GenerationRequest(prompt, greedy(4))) for _ in range(2)]
        assert engine.stats().waiting == 2
        with pytest.raises(OverloadedError, match="2 requests waiting"):
            engine.generate(GenerationRequest(prompt, greedy(4)))
        for stream in [running, *queued]:
            await stream.aclose()
        await run(engine, prompt, greedy(2))  # served: the cancelled ones left the queue and the slot

    asyncio.run(scenario())
    assert engine.stats().waiting == 0


def test_a_passed_deadline_stops_generation_with_its_reason(engine: LlamaCppEngine) -> None:
    async def scenario() -> list[GenerationChunk]:
        request = GenerationRequest(
            chat(engine, QUESTIONS[3]), greedy(400, ignore_eos=True), deadline=time.monotonic() + 0.5
        )
        return [chunk async for chunk in engine.generate(request)]

    chunks = asyncio.run(scenario())
    assert chunks[-1].finish_reason == "deadline"
    assert chunks[-1].completion_tokens < 400


def test_the_kv_budget_caps_the_context_per_slot(make_engine: Callable[..., LlamaCppEngine]) -> None:
    per_token = 2 * 30 * 3 * 64 * 2  # K and V, 30 layers, 3 KV heads of 64, F16: SmolLM2-135M
    engine = make_engine(slots=2, kv_budget_bytes=3 * 128 * per_token)  # 2 slots + the prefix cache
    assert engine.stats().context_per_slot == engine.max_context == 128
    with pytest.raises(InvalidInputError, match="at most 127"):
        engine.generate(GenerationRequest(tuple([42] * 200), greedy()))
    chunks = asyncio.run(run(engine, tuple([42] * 120), greedy(50, ignore_eos=True)))
    assert chunks[-1].finish_reason == "length"
    assert chunks[-1].prompt_tokens + chunks[-1].completion_tokens == 128  # the whole context, no more
