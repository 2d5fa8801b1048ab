"""The mlx-sidecar Python worker: MLX inference served over gRPC on a Unix socket.

How the parts fit (``python -m mlx_worker --socket PATH [--model PATH] ...``):

- ``__main__``: parses the command line (``config``), sets up JSON-lines logging on stderr
  (``logging_json``), reads test-only fault injection (``faults``), checks the socket path
  (``socket_guard``), then runs the ``server``.
- ``server.Worker``: binds the grpc.aio server to the Unix socket only (owner-only, 0600),
  answers health NOT_SERVING at once, starts the engine thread, turns health SERVING once the
  model is loaded and warmed up, watches the engine's heartbeat, drains on SIGTERM and stops on
  EOF of stdin.
- ``servicer.InferenceServicer``: the RPC handlers. ``validation`` turns a request into
  ``params`` (or INVALID_ARGUMENT / RESOURCE_EXHAUSTED naming the field); Generate hands the
  params to the engine and relays what comes back through its ``streams.ResponseStream``;
  ModelInfo's answer comes from ``model_info``. A request resuming a stream cut by a
  worker's death carries a continuation: ``continuation`` checks it and rebuilds its output
  state, ``engine.continuation`` its model state.
- ``engine``: the one thread that owns all MLX state (a package; its doc says how its parts
  fit). ``engine.Engine`` is what the event loop holds: it queues typed commands for the
  thread. On the thread, ``engine.startup`` loads the model (``mlx_worker.model``; mlx-lm
  itself comes through ``fast_import``, without ``transformers``) and warms it up;
  ``engine.loop`` gathers requests sent together and steps the ``engine.decoder``, which runs
  each request in mlx-lm's BatchGenerator (continuous batching) or alone (``engine.solo``),
  with per-request samplers and logits processors (``sampling``), and turns its tokens into
  messages (``responses``, with ``detokenize``: no partial UTF-8, exact stop strings;
  ``timings``); ``engine.output`` hands each step's output (or, with
  ``--stream-interval-ms``, each interval's) to the event loop in one
  ``call_soon_threadsafe``.
- ``shard``: with ``--shard-ranks N``, the worker is rank 0 of an ``mx.distributed`` group
  holding one model tensor-parallel: it starts the other ranks (``shard.follower``) before
  MLX is imported, dies with any of them, and its decoder broadcasts each step so that they
  follow (a package; its doc says how its parts fit).
- ``errors.RequestFailure`` carries a gRPC status code from validation or the engine to the
  handler; ``params`` holds the plain data a handler passes to the engine.
"""

__version__ = "0.1.0"
