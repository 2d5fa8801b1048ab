"""The MLX side of a sharded group: join ``mx.distributed``'s group and shard the model.

Runs on the engine thread of every rank, in the same order (start-up is the same code on
every rank, so the collective operations of loading and warm-up line up).
"""

from __future__ import annotations

import logging
from typing import Any

from .options import ShardOptions

log = logging.getLogger("mlx_worker.shard")


class ShardError(RuntimeError):
    """The group cannot be formed or the model cannot be split over it."""


def join_group(options: ShardOptions) -> Any:
    """Initializes ``mx.distributed`` with the chosen backend (blocks until every rank has
    joined); returns the group."""
    import mlx.core as mx

    try:
        group = mx.distributed.init(strict=True, backend=options.backend)
    except RuntimeError as e:
        raise ShardError(f"cannot form the {options.backend} group: {e}") from e
    if group.size() != options.ranks:
        raise ShardError(f"the group has {group.size()} ranks, {options.ranks} were asked for")
    # Every rank draws the same random numbers (they must compute the same thing).
    mx.random.seed(0)
    log.info(
        "joined the shard group",
        extra={"fields": {"rank": group.rank(), "size": group.size(), "backend": options.backend}},
    )
    return group


def check_divisible(model: Any, ranks: int) -> None:
    """Refuses a model whose heads or hidden sizes do not split evenly over ``ranks``."""
    args = getattr(model, "args", None)
    sizes = {
        "num_attention_heads": getattr(args, "num_attention_heads", None),
        "num_key_value_heads": getattr(args, "num_key_value_heads", None),
        "intermediate_size": getattr(args, "intermediate_size", None),
    }
    for name, value in sizes.items():
        if isinstance(value, int) and value % ranks:
            raise ShardError(f"the model's {name} ({value}) does not divide by {ranks} ranks")


def shard_model(loaded: Any, group: Any) -> None:
    """Splits the loaded model tensor-parallel over ``group`` with mlx-lm's ``model.shard``
    (what ``mlx_lm.utils.sharded_load`` does after loading), then synchronizes the ranks."""
    import mlx.core as mx

    model = loaded.model
    if not hasattr(model, "shard"):
        kind = loaded.description.architecture or type(model).__name__
        raise ShardError(f"mlx-lm cannot shard the {kind} architecture (no model.shard)")
    check_divisible(model, group.size())
    model.shard(group)
    mx.eval(model.parameters())
    mx.eval(mx.distributed.all_sum(mx.array(1.0), group=group))
