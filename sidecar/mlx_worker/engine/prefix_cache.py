"""The prefix cache: KV caches of finished requests, reused by later requests that start with
the same tokens (a chat's next turn, a shared system prompt).

Entries live in mlx-lm's ``LRUPromptCache`` (the trie and the bounds of its server), keyed by
the token ids in the cache: a finished request stores its prompt and output; a shared prompt
prefix is stored as soon as its prefill is done (see :class:`SharedPrefixes`). A lookup gives
a private copy (mutating it cannot touch the entry), trimmed when a longer entry matched, and
always leaves at least one prompt token to feed, since the first output needs its logits.

Bounds: ``max_entries`` and ``max_bytes``; storing beyond either drops the entries stored
longest ago. A request that reused an entry stores its longer one when it finishes, which drops
the shorter (its prefix) — so the entries that keep being extended stay, the ones nobody builds
on age out. A restarted worker starts empty.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..config import WorkerConfig

log = logging.getLogger("mlx_worker.engine")

# One worker serves one model: every entry is keyed under it.
_MODEL_KEY = "model"
# A shared prompt prefix shorter than this is not worth holding requests back for.
MIN_SHARED_PREFIX = 64
DEFAULT_MAX_ENTRIES = 64
_MIB = 1 << 20
_GIB = 1 << 30
DEFAULT_MIN_BYTES = 64 * _MIB
DEFAULT_MAX_BYTES = 32 * _GIB


def default_max_bytes(model_bytes: int, memory_bytes: int) -> int:
    """A quarter of the memory the model (counted twice: weights and working set) leaves,
    between 64 MiB and 32 GiB."""
    spare = max(0, memory_bytes - 2 * model_bytes)
    return max(DEFAULT_MIN_BYTES, min(DEFAULT_MAX_BYTES, spare // 4))


def machine_memory_bytes() -> int:
    """The memory the KV caches live in: the accelerator's if MLX reports it, else the host's."""
    try:
        import mlx.core as mx

        info = mx.device_info()
        size = int(info.get("memory_size", 0) or info.get("total_memory", 0) or 0)
        if size > 0:
            return size
    except Exception:  # an older MLX, or no device information: the host's memory
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def model_nbytes(model: Any) -> int:
    """The bytes of a model's parameters."""
    from mlx.utils import tree_flatten

    return sum(v.nbytes for _, v in tree_flatten(model.parameters()))


def new_prefix_cache(config: WorkerConfig, loaded: Any) -> PrefixCache | None:
    """The prefix cache the configuration asks for (None: off, or in benchmark mode)."""
    if config.synthetic is not None or config.prefix_cache_entries == 0:
        return None
    max_bytes = config.prefix_cache_bytes
    if max_bytes is None:
        max_bytes = default_max_bytes(model_nbytes(loaded.model), machine_memory_bytes())
    if max_bytes == 0:
        return None
    log.info(
        "prefix cache",
        extra={"fields": {"max_entries": config.prefix_cache_entries, "max_bytes": max_bytes}},
    )
    return PrefixCache(config.prefix_cache_entries, max_bytes)


@dataclass
class Hit:
    """What a lookup found: a private copy of the KV cache holding ``tokens`` prompt tokens
    (``cache`` None and ``tokens`` 0: nothing)."""

    cache: list[Any] | None = None
    tokens: int = 0


class PrefixCache:
    """KV caches by their tokens, bounded by entries and bytes (engine thread only)."""

    def __init__(self, max_entries: int, max_bytes: int) -> None:
        from mlx_lm.models.cache import LRUPromptCache

        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._lru = LRUPromptCache(max_size=max_entries, max_bytes=max_bytes)

    @property
    def entries(self) -> int:
        return len(self._lru)

    @property
    def nbytes(self) -> int:
        return int(self._lru.nbytes)

    def lookup(self, prompt: list[int]) -> Hit:
        """The longest cached prefix of ``prompt``, leaving at least its last token to feed."""
        from mlx_lm.models.cache import can_trim_prompt_cache, trim_prompt_cache

        if len(prompt) < 2 or self.entries == 0:
            return Hit()
        cache, rest = self._lru.fetch_nearest_cache(_MODEL_KEY, prompt)
        if cache is not None and not rest:  # the whole prompt: give its last token back
            if can_trim_prompt_cache(cache):
                trim_prompt_cache(cache, 1)
                rest = prompt[-1:]
            else:
                cache, rest = self._lru.fetch_nearest_cache(_MODEL_KEY, prompt[:-1])
                rest = rest + prompt[-1:]
        if cache is None:
            return Hit()
        return Hit(cache=cache, tokens=len(prompt) - len(rest))

    def store(self, tokens: list[int], cache: list[Any]) -> None:
        """Keeps ``cache`` (holding exactly ``tokens``) for later requests; the caller must not
        use it afterwards. Evaluated now, so that no computation graph is kept alive."""
        import mlx.core as mx

        if len(tokens) < 2 or not cache:
            return
        mx.eval([c.state for c in cache])
        self._lru.insert_cache(_MODEL_KEY, list(tokens), cache)
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "prefix cache stored",
                extra={
                    "fields": {
                        "tokens": len(tokens),
                        "entries": self.entries,
                        "bytes": self.nbytes,
                    }
                },
            )


def common_prefix_length(a: list[int], b: list[int]) -> int:
    """How many leading tokens ``a`` and ``b`` share."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


@dataclass
class SharedPrefix:
    """A prompt prefix that several waiting requests share, being prefilled by one of them
    (the leader, ``uid`` in the batch)."""

    tokens: list[int]
    uid: int


@dataclass
class SharedPrefixes:
    """Prefixes being prefilled once for the requests that wait on them (engine thread).

    Requests that arrive together and share a long prefix (a system prompt) would each prefill
    it; instead the first is inserted with its prompt split at the end of the shared part, and
    the others wait until that part's cache is stored (its end of segment), then find it in the
    :class:`PrefixCache`.
    """

    pending: dict[int, SharedPrefix] = field(default_factory=dict)  # by the leader's uid

    def awaited_by(self, prompt: list[int], cached: int) -> SharedPrefix | None:
        """The pending prefix ``prompt`` should wait for: one it starts with that is longer
        than what it has cached by at least MIN_SHARED_PREFIX tokens."""
        for shared in self.pending.values():
            n = len(shared.tokens)
            if n - cached >= MIN_SHARED_PREFIX and n < len(prompt) and prompt[:n] == shared.tokens:
                return shared
        return None

    @staticmethod
    def split_point(prompt: list[int], cached: int, others: list[list[int]]) -> int:
        """Where to split ``prompt`` so that ``others`` can reuse its first part: the shortest
        of its common prefixes with them that is worth sharing (so that the most of them can
        follow), at most its length minus one; 0 if none is."""
        best = 0
        for other in others:
            n = min(common_prefix_length(prompt, other), len(prompt) - 1, len(other) - 1)
            if n - cached >= MIN_SHARED_PREFIX and (best == 0 or n < best):
                best = n
        return best
