"""Every invalid request field gets INVALID_ARGUMENT naming the field; the worker keeps serving."""

from __future__ import annotations

import math
from typing import Any

import grpc
import pytest
from conftest import WorkerProcess
from grpc_health.v1 import health_pb2

from mlx_sidecar.v1 import inference_pb2 as pb

TEXT = pb.Prompt(text="hello")
BIG = 10**6  # beyond the tiny vocabulary
S = pb.SamplingParams
LP = pb.LogprobsOptions
NAN = math.nan
INF = math.inf


def _req(**fields: Any) -> pb.GenerateRequest:
    fields.setdefault("prompt", TEXT)
    return pb.GenerateRequest(**fields)


INVALID_GENERATE = [
    # (id, request, expected message prefix)
    ("no-prompt", pb.GenerateRequest(max_tokens=2), "prompt: "),
    ("empty-prompt-oneof", _req(prompt=pb.Prompt()), "prompt: "),
    ("empty-text", _req(prompt=pb.Prompt(text="")), "prompt.text: "),
    ("empty-chat", _req(prompt=pb.Prompt(chat=pb.ChatPrompt())), "prompt.chat.messages: "),
    (
        "chat-empty-role",
        _req(prompt=pb.Prompt(chat=pb.ChatPrompt(messages=[pb.ChatMessage(content="x")]))),
        "prompt.chat.messages[0].role: ",
    ),
    ("empty-token-ids", _req(prompt=pb.Prompt(tokens=pb.TokenIds())), "prompt.tokens.ids: "),
    (
        "token-id-beyond-vocab",
        _req(prompt=pb.Prompt(tokens=pb.TokenIds(ids=[5, BIG]))),
        "prompt.tokens.ids[1]: ",
    ),
    ("max-tokens-zero", _req(max_tokens=0), "max_tokens: "),
    ("max-tokens-negative", _req(max_tokens=-5), "max_tokens: "),
    ("temperature-nan", _req(sampling=S(temperature=NAN)), "sampling.temperature: "),
    ("temperature-inf", _req(sampling=S(temperature=INF)), "sampling.temperature: "),
    ("temperature-negative", _req(sampling=S(temperature=-0.5)), "sampling.temperature: "),
    ("top-p-above-one", _req(sampling=S(top_p=1.5)), "sampling.top_p: must be in (0, 1], got 1.5"),
    ("top-p-zero", _req(sampling=S(top_p=0.0)), "sampling.top_p: "),
    ("top-p-nan", _req(sampling=S(top_p=NAN)), "sampling.top_p: "),
    ("top-k-negative", _req(sampling=S(top_k=-1)), "sampling.top_k: "),
    ("min-p-one", _req(sampling=S(min_p=1.0)), "sampling.min_p: "),
    ("min-p-negative", _req(sampling=S(min_p=-0.1)), "sampling.min_p: "),
    ("min-p-nan", _req(sampling=S(min_p=NAN)), "sampling.min_p: "),
    ("rep-penalty-zero", _req(sampling=S(repetition_penalty=0.0)), "sampling.repetition_penalty: "),
    ("rep-penalty-inf", _req(sampling=S(repetition_penalty=INF)), "sampling.repetition_penalty: "),
    (
        "rep-context-zero",
        _req(sampling=S(repetition_context_size=0)),
        "sampling.repetition_context_size: ",
    ),
    ("presence-nan", _req(sampling=S(presence_penalty=NAN)), "sampling.presence_penalty: "),
    ("frequency-inf", _req(sampling=S(frequency_penalty=-INF)), "sampling.frequency_penalty: "),
    (
        "penalty-context-negative",
        _req(sampling=S(penalty_context_size=-3)),
        "sampling.penalty_context_size: ",
    ),
    ("logit-bias-id", _req(sampling=S(logit_bias={BIG: 1.0})), f"sampling.logit_bias[{BIG}]: "),
    ("logit-bias-nan", _req(sampling=S(logit_bias={5: NAN})), "sampling.logit_bias[5]: "),
    ("too-many-stops", _req(stop=[f"s{i}" for i in range(17)]), "stop: "),
    ("empty-stop", _req(stop=["ok", ""]), "stop[1]: "),
    ("long-stop", _req(stop=["x" * 257]), "stop[0]: "),
    ("stop-token-id", _req(stop_token_ids=[2, BIG]), "stop_token_ids[1]: "),
    ("top-n-too-big", _req(logprobs=LP(enabled=True, top_n=21)), "logprobs.top_n: "),
    ("top-n-negative", _req(logprobs=LP(enabled=True, top_n=-1)), "logprobs.top_n: "),
    ("top-n-without-enabled", _req(logprobs=pb.LogprobsOptions(top_n=3)), "logprobs.top_n: "),
    ("request-id-too-long", _req(request_id="r" * 300), "request_id: "),
    (
        "continuation-resume-count-zero",
        _req(continuation=pb.Continuation(delivered_token_ids=[5])),
        "continuation.resume_count: ",
    ),
    (
        "continuation-token-beyond-vocab",
        _req(continuation=pb.Continuation(delivered_token_ids=[5, BIG], resume_count=1)),
        "continuation.delivered_token_ids[1]: ",
    ),
    (
        "continuation-reaches-max-tokens",
        _req(
            max_tokens=2, continuation=pb.Continuation(delivered_token_ids=[5, 6], resume_count=1)
        ),
        "continuation.delivered_token_ids: 2 delivered tokens reach max_tokens (2)",
    ),
    (
        "continuation-text-beyond",
        _req(
            continuation=pb.Continuation(
                delivered_token_ids=[5], delivered_text_bytes=99, resume_count=1
            )
        ),
        "continuation.delivered_text_bytes: 99 is beyond",
    ),
]


@pytest.mark.parametrize(
    ("request_msg", "prefix"),
    [pytest.param(r, p, id=i) for i, r, p in INVALID_GENERATE],
)
def test_invalid_generate_field(
    worker: WorkerProcess, request_msg: pb.GenerateRequest, prefix: str
) -> None:
    with pytest.raises(grpc.RpcError) as e:
        list(worker.stub.Generate(request_msg, timeout=10))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, e.value.details()
    assert e.value.details().startswith(prefix), e.value.details()


@pytest.mark.parametrize(
    ("call", "request_msg", "prefix"),
    [
        pytest.param("Tokenize", pb.TokenizeRequest(), "input: ", id="tokenize-no-input"),
        pytest.param(
            "Tokenize",
            pb.TokenizeRequest(chat=pb.ChatPrompt()),
            "chat.messages: ",
            id="tokenize-empty-chat",
        ),
        pytest.param(
            "Detokenize", pb.DetokenizeRequest(ids=[3, BIG]), "ids[1]: ", id="detokenize-id"
        ),
    ],
)
def test_invalid_unary_field(
    worker: WorkerProcess, call: str, request_msg: Any, prefix: str
) -> None:
    with pytest.raises(grpc.RpcError) as e:
        getattr(worker.stub, call)(request_msg, timeout=10)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert e.value.details().startswith(prefix), e.value.details()


def test_valid_edge_values_are_accepted(worker: WorkerProcess) -> None:
    edge = _req(
        max_tokens=2,
        sampling=S(
            temperature=0.5,
            top_p=1.0,
            top_k=10**6,  # beyond the vocabulary: no truncation
            min_p=0.0,
            repetition_penalty=0.5,
            repetition_context_size=10**6,
            presence_penalty=-1.0,
            frequency_penalty=0.0,
            penalty_context_size=1,
            logit_bias={0: -100.0},
            seed=2**64 - 1,
        ),
        stop=["x" * 256] + [f"s{i}" for i in range(15)],
        logprobs=pb.LogprobsOptions(enabled=True, top_n=20),
    )
    msgs = list(worker.stub.Generate(edge, timeout=30))
    assert msgs[-1].HasField("finished")


def test_worker_still_serves_after_bad_requests(worker: WorkerProcess) -> None:
    for _, request_msg, _ in INVALID_GENERATE:
        with pytest.raises(grpc.RpcError):
            list(worker.stub.Generate(request_msg, timeout=10))
    assert worker.health() == health_pb2.HealthCheckResponse.SERVING
    assert worker.proc.poll() is None
    _, fin = worker.generate(prompt=TEXT, max_tokens=3)
    assert fin.usage.completion_tokens == 3


def test_garbage_bytes_do_not_crash_the_worker(worker: WorkerProcess) -> None:
    """Malformed protobuf on the wire: the server answers an error, and keeps serving."""
    call = worker.channel.unary_stream(
        "/mlx_sidecar.v1.Inference/Generate",
        request_serializer=lambda b: b,
        response_deserializer=lambda b: b,
    )
    for payload in (b"\xff\xff\xff\xff", b"\x0a\x05abc", b"\x12\x80\x80\x80\x80\x10"):
        with pytest.raises(grpc.RpcError) as e:
            list(call(payload, timeout=10))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert e.value.details().startswith("request: not a valid mlx_sidecar.v1.GenerateRequest")
    # A prompt kind from a newer contract (an unknown field): named as the prompt's fault.
    with pytest.raises(grpc.RpcError) as e:
        list(call(b"\x0a\x03\x4a\x01x", timeout=10))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert e.value.details().startswith("prompt: "), e.value.details()
    tokenize = worker.channel.unary_unary(
        "/mlx_sidecar.v1.Inference/Tokenize",
        request_serializer=lambda b: b,
        response_deserializer=lambda b: b,
    )
    with pytest.raises(grpc.RpcError) as e:
        tokenize(b"\x0a\x02\xff\xfe", timeout=10)  # text that is not UTF-8
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    _, fin = worker.generate(prompt=TEXT, max_tokens=1)
    assert fin.usage.completion_tokens == 1
