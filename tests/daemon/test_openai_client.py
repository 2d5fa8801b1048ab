"""The official `openai` package against the daemon: chat and completions, streaming and not,
usage in the stream, and errors raised as the package's own exception types."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from conftest import Daemon


@pytest.fixture(scope="module")
def client(daemon: Daemon) -> Iterator[openai.OpenAI]:
    # The package insists on a key; the daemon has none on this listener and ignores it.
    with openai.OpenAI(
        base_url=f"{daemon.base_url}/v1", api_key="unused", max_retries=0, timeout=60
    ) as c:
        yield c


def test_chat_completion(client: openai.OpenAI, served_model: str) -> None:
    reply = client.chat.completions.create(
        model=served_model,
        messages=[{"role": "user", "content": "Hello"}],
        max_tokens=6,
        temperature=0,
    )
    assert reply.object == "chat.completion"
    assert reply.model == served_model
    assert len(reply.choices) == 1
    choice = reply.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content
    assert choice.finish_reason == "length"
    assert reply.usage is not None
    assert reply.usage.completion_tokens == 6
    assert reply.usage.prompt_tokens > 0
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + 6


def test_chat_stream_matches_the_whole_answer_and_ends_with_usage(
    client: openai.OpenAI, served_model: str
) -> None:
    request = {
        "model": served_model,
        "messages": [{"role": "user", "content": "Tell me a story"}],
        "max_tokens": 12,
        "temperature": 0,
    }
    whole = client.chat.completions.create(**request)
    chunks = list(
        client.chat.completions.create(
            **request, stream=True, stream_options={"include_usage": True}
        )
    )
    assert chunks, "no chunks"
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1, "every chunk of a stream has its id"
    *content_chunks, usage_chunk = chunks
    text = "".join(c.choices[0].delta.content or "" for c in content_chunks)
    assert text == whole.choices[0].message.content
    assert content_chunks[0].choices[0].delta.role == "assistant"
    assert content_chunks[-1].choices[0].finish_reason == "length"
    assert usage_chunk.choices == []
    assert usage_chunk.usage is not None
    assert usage_chunk.usage.completion_tokens == 12
    assert usage_chunk.usage.prompt_tokens == whole.usage.prompt_tokens  # type: ignore[union-attr]


def test_chat_stream_without_include_usage_has_no_usage(
    client: openai.OpenAI, served_model: str
) -> None:
    chunks = list(
        client.chat.completions.create(
            model=served_model,
            messages=[{"role": "user", "content": "Hi"}],
            max_tokens=3,
            stream=True,
        )
    )
    assert chunks
    assert all(c.usage is None for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "length"


def test_completion(client: openai.OpenAI, served_model: str) -> None:
    reply = client.completions.create(
        model=served_model, prompt="Once upon a time", max_tokens=5, temperature=0, logprobs=2
    )
    assert reply.object == "text_completion"
    choice = reply.choices[0]
    assert choice.text
    assert choice.finish_reason == "length"
    assert choice.logprobs is not None
    assert len(choice.logprobs.tokens or []) == 5
    # The legacy shape keys alternatives by their text, so two byte tokens that both show
    # as U+FFFD count once: at most 2 each, and the chosen token among them.
    tops = choice.logprobs.top_logprobs or []
    assert len(tops) == 5
    for token, top in zip(choice.logprobs.tokens or [], tops, strict=True):
        assert 1 <= len(top) <= 2
        assert token in top
    assert reply.usage is not None
    assert reply.usage.completion_tokens == 5


def test_completion_stream_with_usage(client: openai.OpenAI, served_model: str) -> None:
    whole = client.completions.create(
        model=served_model, prompt="The capital of France", max_tokens=8, temperature=0
    )
    chunks = list(
        client.completions.create(
            model=served_model,
            prompt="The capital of France",
            max_tokens=8,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    *text_chunks, usage_chunk = chunks
    assert "".join(c.choices[0].text for c in text_chunks) == whole.choices[0].text
    assert text_chunks[-1].choices[0].finish_reason == "length"
    assert usage_chunk.choices == []
    assert usage_chunk.usage is not None
    assert usage_chunk.usage.completion_tokens == 8


def test_stop_sequence_ends_the_answer(client: openai.OpenAI, served_model: str) -> None:
    free = client.completions.create(
        model=served_model, prompt="Hello", max_tokens=10, temperature=0
    ).choices[0]
    stop = free.text[3:5]
    assert stop.strip(), f"a stop string from the free answer: {free.text!r}"
    stopped = client.completions.create(
        model=served_model, prompt="Hello", max_tokens=10, temperature=0, stop=[stop]
    ).choices[0]
    assert stopped.finish_reason == "stop"
    assert stopped.text == free.text[: free.text.index(stop)]


def test_models_list(client: openai.OpenAI, served_model: str) -> None:
    models = client.models.list()
    assert [m.id for m in models.data] == [served_model]
    assert client.models.retrieve(served_model).id == served_model


def test_bad_parameter_is_bad_request_naming_it(client: openai.OpenAI, served_model: str) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(
            model=served_model,
            messages=[{"role": "user", "content": "Hi"}],
            max_tokens=4,
            top_p=1.5,
        )
    assert raised.value.status_code == 400
    assert raised.value.type == "invalid_request_error"
    assert raised.value.param == "top_p"
    assert "top_p" in raised.value.message


def test_bad_parameter_in_a_stream_is_bad_request_too(
    client: openai.OpenAI, served_model: str
) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        list(
            client.completions.create(
                model=served_model, prompt="Hi", max_tokens=4, temperature=-1, stream=True
            )
        )
    assert raised.value.param == "temperature"


def test_unknown_model_is_not_found(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as raised:
        client.chat.completions.create(
            model="no-such-model", messages=[{"role": "user", "content": "Hi"}], max_tokens=2
        )
    assert raised.value.status_code == 404
    assert raised.value.code == "model_not_found"
    assert raised.value.param == "model"
