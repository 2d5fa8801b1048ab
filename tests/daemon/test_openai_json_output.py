"""OpenAI's `response_format` through the daemon with the official `openai` package: JSON
mode, a JSON schema (also via the package's pydantic helper `parse`), streamed and not; a
schema the grammar engine refuses and an unknown type are 400s naming `response_format`."""

from __future__ import annotations

import json
from collections.abc import Iterator

import jsonschema
import openai
import pydantic
import pytest

from conftest import Daemon

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "maxItems": 3},
    },
    "required": ["name", "age", "tags"],
    "additionalProperties": False,
}
MESSAGES = [{"role": "user", "content": "Describe a person as JSON."}]


@pytest.fixture(scope="module")
def client(daemon: Daemon) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=f"{daemon.base_url}/v1", api_key="unused", max_retries=0, timeout=120
    ) as c:
        yield c


def _schema_format(schema: dict) -> dict:
    return {
        "type": "json_schema",
        "json_schema": {"name": "person", "schema": schema, "strict": True},
    }


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_chat_json_schema_validates(
    client: openai.OpenAI, served_model: str, temperature: float
) -> None:
    reply = client.chat.completions.create(
        model=served_model,
        messages=MESSAGES,
        max_tokens=1000,
        temperature=temperature,
        seed=3,
        response_format=_schema_format(PERSON),  # type: ignore[arg-type]
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "stop", choice.message.content
    jsonschema.validate(json.loads(choice.message.content or ""), PERSON)


def test_chat_json_object_streamed(client: openai.OpenAI, served_model: str) -> None:
    chunks = list(
        client.chat.completions.create(
            model=served_model,
            messages=MESSAGES,
            max_tokens=1000,
            response_format={"type": "json_object"},
            stream=True,
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].choices[0].finish_reason == "stop", text
    assert isinstance(json.loads(text), dict)


def test_parse_with_a_pydantic_model(client: openai.OpenAI, served_model: str) -> None:
    class Point(pydantic.BaseModel):
        x: int
        y: int
        label: str = pydantic.Field(max_length=8)

    reply = client.chat.completions.parse(
        model=served_model, messages=MESSAGES, max_tokens=1000, response_format=Point
    )
    point = reply.choices[0].message.parsed
    assert isinstance(point, Point), reply.choices[0].message.content


def test_completion_json_schema(client: openai.OpenAI, served_model: str) -> None:
    reply = client.completions.create(
        model=served_model,
        prompt="JSON:",
        max_tokens=1000,
        extra_body={"response_format": _schema_format(PERSON)},
    )
    assert reply.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(reply.choices[0].text), PERSON)


def test_text_format_is_free_text(client: openai.OpenAI, served_model: str) -> None:
    reply = client.chat.completions.create(
        model=served_model, messages=MESSAGES, max_tokens=8, response_format={"type": "text"}
    )
    assert reply.choices[0].finish_reason == "length"


@pytest.mark.parametrize(
    ("response_format", "param"),
    [
        (
            _schema_format({"type": "array", "uniqueItems": True}),
            "response_format.json_schema.schema",
        ),
        (_schema_format({"type": "objekt"}), "response_format.json_schema.schema"),
        ({"type": "xml"}, "response_format"),
    ],
    ids=["unsupported-keyword", "invalid-type", "unknown-format-type"],
)
def test_refused_formats_are_400_naming_response_format(
    client: openai.OpenAI, served_model: str, response_format: dict, param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(
            model=served_model,
            messages=MESSAGES,
            max_tokens=4,
            response_format=response_format,  # type: ignore[arg-type]
        )
    assert raised.value.status_code == 400
    assert raised.value.param == param, raised.value.message
    assert "response_format" in raised.value.message
