"""The engine: the one thread that owns all MLX state, and what it is made of.

The event loop talks to it through :class:`Engine` (``submit``, ``cancel``, ``cancel_all``,
``stop``), which puts typed commands (:mod:`.commands`) on the thread's queue. On the thread:

- :mod:`.startup` imports MLX and mlx-lm, loads the model and warms it up (every path a
  request can take, and on a GPU every kernel size a step can need), then hands the
  ``BatchGenerator`` (mlx-lm's, as :mod:`.eager_batch` extends it) and the prefill plan to
  the decoder;
- :mod:`.loop` takes the queued commands, lingering briefly when woken from idle so that
  requests sent together start together (:mod:`.gather`), runs one decoder step, and beats the
  heartbeat the health watchdog reads;
- :mod:`.decoder` owns the running requests: each runs in the ``BatchGenerator`` or alone as
  the :mod:`.solo` sequence (a field of its state says which), with the hand-over between them
  when a second request arrives; it turns each step's tokens into output
  (:mod:`mlx_worker.responses`) and fails only what an error touches;
- :mod:`.continuation` starts a request that resumes a stream cut by a worker's death: its
  delivered tokens prefilled with the prompt, or decoded again without being sent;
- :mod:`.output` hands that output to the event loop in one ``call_soon_threadsafe`` per step
  (or per ``--stream-interval-ms``), where :func:`mlx_worker.streams.dispatch` fans it out.
"""

from .commands import Job
from .loop import Engine, EngineUnavailable
from .startup import StartupReport

__all__ = ["Engine", "EngineUnavailable", "Job", "StartupReport"]
