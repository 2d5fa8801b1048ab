"""The one exception type that carries a gRPC status code out of validation and the engine."""

from __future__ import annotations

import grpc


class RequestFailure(Exception):
    """This request fails with ``code``; ``message`` names the field when a field is at fault."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def invalid(field: str, problem: str) -> RequestFailure:
    """INVALID_ARGUMENT whose message starts with the field path."""
    return RequestFailure(grpc.StatusCode.INVALID_ARGUMENT, f"{field}: {problem}")
