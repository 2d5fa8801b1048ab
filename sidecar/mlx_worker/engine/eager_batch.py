"""mlx-lm's ``BatchGenerator``, moving a prompt to generation in the step that prefilled it.

mlx-lm moves a sequence from prompt processing to generation at the start of a step, by
feeding its last prompt token (whose sample the step after hands out). A prompt whose last
chunk a step prefills therefore waits a whole step before it starts generating: its first
token comes out three steps after it was inserted. :meth:`EagerBatchGenerator.start_generating`,
called after a step, makes the same move at once for the sequences left with only their last
token, so their first token comes out a step sooner. The computation is mlx-lm's own, one
step earlier. Figures: BENCHMARKS.md, "Generation starts in the prefill step".
"""

from __future__ import annotations

from collections.abc import Collection

import mlx.core as mx
from mlx_lm.generate import BatchGenerator


class EagerBatchGenerator(BatchGenerator):
    """A ``BatchGenerator`` whose caller moves prefilled prompts to generation each step."""

    def start_generating(self, held: Collection[int] = ()) -> None:
        """Moves every sequence left with only its last prompt token, except those in
        ``held`` (uids), from prompt processing to generation (mlx-lm's move of the next
        step, now)."""
        processing = self._currently_processing
        uids = self._prompt_batch.uids
        ready = [
            i
            for i, (segments, _, _) in enumerate(processing)
            if len(segments) == 1 and len(segments[0]) == 1 and uids[i] not in held
        ]
        if not ready:
            return
        moving = set(ready)
        last_inputs = [processing[i][0][0] for i in ready]
        self._currently_processing = [s for i, s in enumerate(processing) if i not in moving]
        with mx.stream(self._stream):
            started = self._prompt_batch.split(ready).generate(last_inputs)
            self._generation_batch.extend(started)
