"""One model sharded over several processes with MLX's own ``mx.distributed``.

``python -m mlx_worker --shard-ranks N`` (or ``--shard-hostfile``) makes the worker rank 0 of
a group of N processes that hold one model tensor-parallel, split by mlx-lm's
``model.shard(group)`` (what ``mlx_lm.utils.sharded_load`` does):

- :mod:`.options`: the ``--shard-*`` flags;
- :mod:`.hostfile`: the hosts (``mlx.distributed_config``'s format) and the ring backend's
  ``MLX_HOSTFILE`` (``mlx.launch``'s format), with free ports on loopback;
- :mod:`.ranks`: rank 0 starts ranks 1..N-1 as its children (over ssh on other hosts),
  watches them, and exits when any of them ends, so the supervisor restarts the group;
- :mod:`.group`: ``mx.distributed.init`` (ring or NCCL) and ``model.shard``, on the engine
  thread of every rank, during the same start-up;
- :mod:`.steps`: rank 0 broadcasts the commands its decoder gets and each step; the others
  replay them on the same decoder, so every rank makes the same model calls;
- :mod:`.follower`: the entry point of ranks 1..N-1.

Rank 0 alone binds the socket, answers gRPC and health; its engine heartbeat stalls if any
rank stalls (each step and each idle tick is a collective operation), so health reflects
every rank. The supervisor sees one worker process and one process group.
"""
