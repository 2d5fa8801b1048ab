"""The mlx_sidecar.v1.Inference handlers (they run on the event loop).

Generate validates and tokenizes the request here, hands it to the engine thread, then relays
what the engine pushes into the request's ResponseStream. If the call ends early (the client
cancelled or went away, or its deadline passed), grpc.aio cancels the handler and the
``finally`` tells the engine to drop the sequence at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf.message import DecodeError

from mlx_sidecar.v1 import inference_pb2 as pb
from mlx_sidecar.v1 import inference_pb2_grpc as pb_grpc

from .engine import EngineUnavailable
from .errors import RequestFailure
from .model_info import static_model_info
from .streams import ResponseStream
from .timings import RequestClock, now
from .validation import ModelLimits, detokenize_request, tokenize_request, validate_generate

if TYPE_CHECKING:
    from .config import WorkerConfig
    from .engine import Engine

log = logging.getLogger(__name__)

SERVICE_NAME = "mlx_sidecar.v1.Inference"


# Prompts longer than this are tokenized on a worker thread, so the event loop keeps serving
# the other streams meanwhile; shorter ones inline (no thread hop on the time to first token).
LARGE_PROMPT_CHARS = 32_768


def _prompt_chars(prompt: pb.Prompt | pb.TokenizeRequest) -> int:
    """Characters to tokenize in a prompt or a Tokenize request."""
    kind = prompt.WhichOneof("input")
    if kind == "text":
        return len(prompt.text)
    if kind == "chat":
        return sum(len(m.content) for m in prompt.chat.messages)
    return 0


class MalformedRequest:
    """What a request that isn't valid protobuf deserializes to (the handler rejects it)."""

    __slots__ = ("error", "type_name")

    def __init__(self, type_name: str, error: str) -> None:
        self.type_name = type_name
        self.error = error


def _lenient(cls: Any) -> Callable[[bytes], Any]:
    """A deserializer that never raises, so malformed input gets INVALID_ARGUMENT, not UNKNOWN."""

    def parse(data: bytes) -> Any:
        try:
            return cls.FromString(data)
        except DecodeError as e:
            return MalformedRequest(cls.DESCRIPTOR.full_name, str(e))

    return parse


def _reject_malformed(request: Any) -> None:
    if isinstance(request, MalformedRequest):
        raise RequestFailure(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"request: not a valid {request.type_name}: {request.error}",
        )


def add_to_server(servicer: InferenceServicer, server: grpc.aio.Server) -> None:
    """Registers the service (like the generated add_InferenceServicer_to_server)."""
    handlers = {
        "Generate": grpc.unary_stream_rpc_method_handler(
            servicer.Generate,
            request_deserializer=_lenient(pb.GenerateRequest),
            response_serializer=pb.GenerateResponse.SerializeToString,
        ),
    }
    for name, req, resp in (
        ("Tokenize", pb.TokenizeRequest, pb.TokenizeResponse),
        ("Detokenize", pb.DetokenizeRequest, pb.DetokenizeResponse),
        ("ModelInfo", pb.ModelInfoRequest, pb.ModelInfoResponse),
    ):
        handlers[name] = grpc.unary_unary_rpc_method_handler(
            getattr(servicer, name),
            request_deserializer=_lenient(req),
            response_serializer=resp.SerializeToString,
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)


async def _abort_internal(context: grpc.aio.ServicerContext, rpc: str, error: Exception) -> None:
    log.error("%s failed", rpc, exc_info=(type(error), error, error.__traceback__))
    await context.abort(grpc.StatusCode.INTERNAL, f"internal error in {rpc}: {error}")


def _merge(items: list[Any]) -> list[Any]:
    """Merges consecutive chunks into one (a client that fell behind gets one message)."""
    out: list[Any] = []
    for item in items:
        if (
            out
            and isinstance(item, pb.GenerateResponse)
            and item.HasField("chunk")
            and isinstance(out[-1], pb.GenerateResponse)
            and out[-1].HasField("chunk")
        ):
            prev = out[-1].chunk
            prev.text += item.chunk.text
            prev.token_ids.extend(item.chunk.token_ids)
            prev.logprobs.extend(item.chunk.logprobs)
        else:
            out.append(item)
    return out


class InferenceServicer(pb_grpc.InferenceServicer):
    """Serves the loaded model; answers UNAVAILABLE until it is ready and while draining."""

    def __init__(self, config: WorkerConfig, engine: Engine, model_info_delay: float = 0.0) -> None:
        self._config = config
        self._engine = engine
        # Test-only fault injection (``model_info_delay``): seconds ModelInfo waits.
        self._model_info_delay = model_info_delay
        self._limits: ModelLimits | None = None
        self._info: pb.ModelInfoResponse | None = None
        self.draining = False
        self.in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self.engine_healthy = True

    def set_ready(self, loaded: Any, load_seconds: float) -> None:
        """Called once the engine has loaded and warmed up the model."""
        d = loaded.description
        tok = loaded.tokenizer
        self._limits = ModelLimits(
            tokenizer=tok,
            vocab_size=d.vocab_size,
            context_length=d.context_length,
            eos_token_ids=frozenset(tok.eos_token_ids),
            default_max_tokens=self._config.default_max_tokens,
        )
        self._info = static_model_info(
            loaded, self._config.max_batch, load_seconds, self._config.shard
        )

    async def wait_idle(self) -> None:
        """Returns once no Generate call is in flight."""
        await self._idle.wait()

    def _available(self) -> ModelLimits:
        if self.draining:
            raise RequestFailure(grpc.StatusCode.UNAVAILABLE, "the worker is shutting down")
        if self._limits is None:
            raise RequestFailure(grpc.StatusCode.UNAVAILABLE, "the model is still loading")
        if not self.engine_healthy:
            raise RequestFailure(grpc.StatusCode.UNAVAILABLE, "the worker's engine is not running")
        return self._limits

    async def Generate(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.GenerateResponse]:
        clock = RequestClock(arrival=now())
        try:
            _reject_malformed(request)
            limits = self._available()
            if _prompt_chars(request.prompt) > LARGE_PROMPT_CHARS or request.HasField(
                "response_format"
            ):
                # Tokenizing megabytes, or compiling a grammar, takes a while: not on the
                # event loop.
                params = await asyncio.to_thread(validate_generate, request, limits)
            else:
                params = validate_generate(request, limits)
            limit = self._config.max_batch + self._config.max_queue
            if self.in_flight >= limit:
                raise RequestFailure(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"the worker's queue is full ({self.in_flight} requests in flight, "
                    f"limit {limit})",
                )
            stream = ResponseStream()
            job = self._engine.submit(params, stream, clock)
        except RequestFailure as e:
            await context.abort(e.code, e.message)
        except EngineUnavailable as e:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(e))
        except Exception as e:  # a bug: this request fails, the worker serves on
            await _abort_internal(context, "Generate", e)
        self.in_flight += 1
        self._idle.clear()
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "request accepted",
                extra={"fields": {"request_id": params.request_id, "in_flight": self.in_flight}},
            )
        done = False
        try:
            while not done:
                for item in _merge(await stream.take()):
                    if isinstance(item, RequestFailure):
                        done = True
                        await context.abort(item.code, item.message)
                    done = item.HasField("finished")
                    yield item
        finally:
            self.in_flight -= 1
            if not self.in_flight:
                self._idle.set()
            stream.closed = True
            if not done:
                self._engine.cancel(job)

    async def Tokenize(
        self, request: pb.TokenizeRequest, context: grpc.aio.ServicerContext
    ) -> pb.TokenizeResponse:
        try:
            _reject_malformed(request)
            limits = self._available()
            if _prompt_chars(request) > LARGE_PROMPT_CHARS:
                ids, text = await asyncio.to_thread(tokenize_request, request, limits)
            else:
                ids, text = tokenize_request(request, limits)
        except RequestFailure as e:
            await context.abort(e.code, e.message)
        except Exception as e:
            await _abort_internal(context, "Tokenize", e)
        return pb.TokenizeResponse(ids=ids, text=text)

    async def Detokenize(
        self, request: pb.DetokenizeRequest, context: grpc.aio.ServicerContext
    ) -> pb.DetokenizeResponse:
        try:
            _reject_malformed(request)
            limits = self._available()
            if len(request.ids) > LARGE_PROMPT_CHARS // 4:
                text = await asyncio.to_thread(detokenize_request, request, limits)
            else:
                text = detokenize_request(request, limits)
        except RequestFailure as e:
            await context.abort(e.code, e.message)
        except Exception as e:
            await _abort_internal(context, "Detokenize", e)
        return pb.DetokenizeResponse(text=text)

    async def ModelInfo(
        self, request: pb.ModelInfoRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInfoResponse:
        try:
            _reject_malformed(request)
            self._available()
        except RequestFailure as e:
            await context.abort(e.code, e.message)
        if self._model_info_delay:
            await asyncio.sleep(self._model_info_delay)
        import mlx.core as mx

        info = pb.ModelInfoResponse()
        info.CopyFrom(self._info)
        info.active_memory_bytes = mx.get_active_memory()
        info.peak_memory_bytes = mx.get_peak_memory()
        info.cache_memory_bytes = mx.get_cache_memory()
        return info
