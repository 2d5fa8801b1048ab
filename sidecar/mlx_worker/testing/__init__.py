"""Helpers for tests: a tiny random-weight model (see tiny_model)."""
