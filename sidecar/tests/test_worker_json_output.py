"""Structured output (response_format) through a real worker.

The tiny model's random weights produce garbage, so the grammar's mask does all the work:
every output of 50 schemas, greedy and sampled, must parse and validate with ``jsonschema``,
and end with finish reason STOP when the JSON is complete. The requests run several at a
time, so they share the batch with each other and with unconstrained neighbours.

One exception, checked as strictly as it allows: where a schema lets a string run on (an
open object's property names, a string with no bound), garbage can fill it until max_tokens.
Such an output may end with LENGTH, and then its tokens must still be a valid start of the
schema's JSON (a fresh matcher accepts them all). About 1 of the 50 does, per mode.
"""

from __future__ import annotations

import json
import math
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import jsonschema
import pytest
from conftest import WorkerProcess
from json_schemas import SCHEMAS, has_unbounded_string

from mlx_sidecar.v1 import inference_pb2 as pb

PROMPT = pb.Prompt(text="Answer in JSON:")
# Room for the longest output the schemas allow: the outputs must end by completing.
MAX_TOKENS = 1500


def _schema_format(schema: Any) -> pb.ResponseFormat:
    return pb.ResponseFormat(json_schema=json.dumps(schema))


def _run(worker: WorkerProcess, name: str, sampled: bool) -> tuple[str, str, Any, Any]:
    sampling = pb.SamplingParams(temperature=1.0, seed=7) if sampled else pb.SamplingParams()
    chunks, fin = worker.generate(
        timeout=300,
        prompt=PROMPT,
        max_tokens=MAX_TOKENS,
        sampling=sampling,
        response_format=_schema_format(SCHEMAS[name]),
    )
    return name, "".join(c.text for c in chunks), fin, [t for c in chunks for t in c.token_ids]


def _valid_prefix(schema: Any, ids: list[int], tokenizer: Any) -> bool:
    from mlx_worker.grammar import compile_response_format

    state = compile_response_format(_schema_format(schema), tokenizer)
    try:
        state.consume_delivered(ids)
    except ValueError:
        return False
    return not state.is_complete


@pytest.mark.parametrize("sampled", [False, True], ids=["greedy", "sampled"])
def test_fifty_schemas_always_validate(
    worker: WorkerProcess, tiny_tokenizer: Any, sampled: bool
) -> None:
    assert len(SCHEMAS) == 50
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda n: _run(worker, n, sampled), SCHEMAS))
    failures, cut = [], []
    for name, text, fin, ids in results:
        schema = SCHEMAS[name]
        try:
            if fin.finish_reason == pb.FINISH_REASON_LENGTH and has_unbounded_string(schema):
                assert len(ids) == MAX_TOKENS
                assert _valid_prefix(schema, ids, tiny_tokenizer), "not a valid prefix"
                cut.append(name)
                continue
            assert fin.finish_reason == pb.FINISH_REASON_STOP, (
                f"finish {pb.FinishReason.Name(fin.finish_reason)}"
            )
            assert not fin.HasField("stop_token_id")  # ended by the grammar, not by EOS
            assert fin.usage.completion_tokens == len(ids)
            jsonschema.validate(json.loads(text), SCHEMAS[name])
        except (AssertionError, ValueError, jsonschema.ValidationError) as e:
            failures.append(f"{name}: {e}: {text[:200]!r}")
    assert not failures, "\n".join(failures)
    assert len(cut) <= 5, f"too many outputs ran into max_tokens: {cut}"


INVALID_FORMATS = [
    # (id, response_format, expected message start)
    ("not-json", pb.ResponseFormat(json_schema="{oops"), "response_format.json_schema: is not"),
    ("empty", pb.ResponseFormat(json_schema=" "), "response_format.json_schema: must not be"),
    ("not-object", pb.ResponseFormat(json_schema="[1]"), "response_format.json_schema: must be"),
    ("unknown-type", _schema_format({"type": "objekt"}), "response_format.json_schema: Invalid"),
    (
        "unsupported-keyword",
        _schema_format({"type": "array", "uniqueItems": True}),
        'response_format.json_schema: Unimplemented keys: ["uniqueItems"]',
    ),
    (
        "missing-ref",
        _schema_format({"$ref": "#/$defs/nope"}),
        "response_format.json_schema: Pointer",
    ),
    (
        "bad-pattern",
        _schema_format({"type": "string", "pattern": "[a-"}),
        "response_format.json_schema: regex parse error",
    ),
    (
        "unsatisfiable",
        _schema_format({"type": "integer", "minimum": 5, "maximum": 1}),
        "response_format.json_schema: Unsatisfiable",
    ),
    ("unset-oneof", pb.ResponseFormat(), "response_format: must be one of"),
]


@pytest.mark.parametrize(
    ("fmt", "prefix"), [(f, p) for _, f, p in INVALID_FORMATS], ids=[i for i, *_ in INVALID_FORMATS]
)
def test_invalid_schema_is_invalid_argument(
    worker: WorkerProcess, fmt: pb.ResponseFormat, prefix: str
) -> None:
    with pytest.raises(grpc.RpcError) as e:
        worker.generate(prompt=PROMPT, max_tokens=4, response_format=fmt)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, e.value.details()
    assert e.value.details().startswith(prefix), e.value.details()
    # The worker serves on.
    _, fin = worker.generate(prompt=PROMPT, max_tokens=2)
    assert fin.finish_reason == pb.FINISH_REASON_LENGTH


def test_json_object_alone_runs_solo_and_stops_when_complete(worker: WorkerProcess) -> None:
    chunks, fin = worker.generate(
        prompt=PROMPT,
        max_tokens=MAX_TOKENS,
        request_id="json-solo",
        response_format=pb.ResponseFormat(json_object=pb.JsonObjectFormat()),
        logprobs=pb.LogprobsOptions(enabled=True, top_n=5),
    )
    assert worker.find_log("request runs alone", request_id="json-solo") is not None
    text = "".join(c.text for c in chunks)
    assert fin.finish_reason == pb.FINISH_REASON_STOP, text
    assert isinstance(json.loads(text), dict)
    for chunk in chunks:
        for lp in chunk.logprobs:
            # Masked tokens are not offered as alternatives.
            assert all(math.isfinite(t.logprob) for t in lp.top), lp


def test_unconstrained_neighbours_are_unaffected(worker: WorkerProcess) -> None:
    """Plain requests in the batch with constrained ones give the tokens they give alone."""
    plain = {"prompt": pb.Prompt(text="Once upon a time"), "max_tokens": 40}
    chunks, alone = worker.generate(**plain)
    want = [t for c in chunks for t in c.token_ids]
    assert alone.finish_reason == pb.FINISH_REASON_LENGTH and len(want) == 40

    def plain_run(_: int) -> list[int]:
        chunks, _ = worker.generate(**plain)
        return [t for c in chunks for t in c.token_ids]

    names = ["person", "order", "recursive_tree", "many_fields"]
    with ThreadPoolExecutor(8) as pool:
        constrained = [pool.submit(_run, worker, n, False) for n in names]
        plains = [pool.submit(plain_run, i) for i in range(4)]
        for future in plains:
            assert future.result() == want
        for future in constrained:
            name, text, fin, _ = future.result()
            assert fin.finish_reason == pb.FINISH_REASON_STOP, (name, text)
            jsonschema.validate(json.loads(text), SCHEMAS[name])


def test_delivered_tokens_that_break_the_schema_are_invalid(worker: WorkerProcess) -> None:
    with pytest.raises(grpc.RpcError) as e:
        worker.generate(
            prompt=PROMPT,
            max_tokens=8,
            response_format=_schema_format(SCHEMAS["person"]),
            continuation=pb.Continuation(delivered_token_ids=[19, 20], resume_count=1),  # "12"
        )
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert e.value.details().startswith("continuation.delivered_token_ids: "), e.value.details()


def test_grammar_state_rebuilt_from_delivered_tokens(tiny_tokenizer: Any) -> None:
    """A continued stream's state, rebuilt from the delivered tokens, allows what the state
    that followed the stream step by step allows, and completes at the same token."""
    from mlx_worker.grammar import compile_response_format

    fmt = _schema_format(SCHEMAS["person"])
    text = '{"name": "Ann", "age": 42}'
    ids = tiny_tokenizer.encode(text, add_special_tokens=False)
    followed = compile_response_format(fmt, tiny_tokenizer)
    followed.feed_history(5, lambda n: [])  # the first mask: a 5-token prompt
    for i, token in enumerate(ids[:-1]):
        followed.feed_history(6 + i, lambda n, t=token: [t])
        assert not followed.observe(token)
    rebuilt = compile_response_format(fmt, tiny_tokenizer)
    rebuilt.consume_delivered(ids[:-1])
    assert (rebuilt.allowed() == followed.allowed()).all()
    assert rebuilt.allowed()[ids[-1]] == 1
    assert rebuilt.observe(ids[-1]) and followed.observe(ids[-1])
    assert json.loads(tiny_tokenizer.decode(ids)) == {"name": "Ann", "age": 42}
