"""Fault injection for tests, from the environment variable MLX_WORKER_FAULTS.

Never on unless the variable is set. A comma-separated list of::

    startup_delay=SECS          sleep before loading the model (health answers NOT_SERVING)
    startup_hang                never finish starting (health stays NOT_SERVING)
    startup_exit=CODE           exit with CODE right after logging is set up
    load_error                  model loading fails (the worker exits non-zero)
    ignore_sigterm              SIGTERM is logged and otherwise ignored
    engine_stall_after_steps=N  the engine thread blocks forever after N steps
    engine_crash_after_steps=N  the engine thread raises and dies after N steps
    sigkill_after_steps=N       the worker SIGKILLs itself when step N+1 begins
    sigkill_at_hand_over        the worker SIGKILLs itself once a request running alone has
                                been moved into the batch (a second request came)
    model_info_delay=SECS       every ModelInfo call waits SECS before it answers

MLX_WORKER_FAULTS_FILE=PATH adds the faults written in that file (same syntax; newlines
separate entries too), read once at start-up when the file exists: a test or the ``chaos``
command changes the file to change the faults of the *next* worker start (a slow restart).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

ENV_VAR = "MLX_WORKER_FAULTS"
FILE_ENV_VAR = "MLX_WORKER_FAULTS_FILE"


@dataclass(frozen=True)
class Faults:
    """The faults to inject (all off by default)."""

    startup_delay: float = 0.0
    startup_hang: bool = False
    startup_exit: int | None = None
    load_error: bool = False
    ignore_sigterm: bool = False
    engine_stall_after_steps: int | None = None
    engine_crash_after_steps: int | None = None
    sigkill_after_steps: int | None = None
    sigkill_at_hand_over: bool = False
    model_info_delay: float = 0.0

    @property
    def any(self) -> bool:
        """Whether any fault is on."""
        return self != Faults()


_FLAGS = {"startup_hang", "load_error", "ignore_sigterm", "sigkill_at_hand_over"}
_VALUED = {
    "startup_delay",
    "startup_exit",
    "engine_stall_after_steps",
    "engine_crash_after_steps",
    "sigkill_after_steps",
    "model_info_delay",
}


def parse_faults(spec: str | None) -> Faults:
    """Parses the MLX_WORKER_FAULTS value; raises ValueError naming the bad entry."""
    values: dict[str, object] = {}
    for raw in (spec or "").split(","):
        entry = raw.strip()
        if not entry:
            continue
        name, sep, value = entry.partition("=")
        name = name.strip()
        if name in _FLAGS:
            if sep:
                raise ValueError(f"{ENV_VAR}: {name} takes no value, got {entry!r}")
            values[name] = True
        elif name in _VALUED:
            if not sep:
                raise ValueError(f"{ENV_VAR}: {name} needs a value ({name}=...)")
            values[name] = _parse_value(name, value.strip())
        else:
            raise ValueError(f"{ENV_VAR}: unknown fault {name!r}")
    return Faults(**values)  # type: ignore[arg-type]


def load_faults(environ: Mapping[str, str]) -> Faults:
    """The faults of MLX_WORKER_FAULTS plus those in the MLX_WORKER_FAULTS_FILE file, if any."""
    specs = [environ.get(ENV_VAR, "")]
    path = environ.get(FILE_ENV_VAR)
    if path:
        try:
            specs.append(Path(path).read_text().replace("\n", ","))
        except FileNotFoundError:
            pass
        except OSError as e:
            raise ValueError(f"{FILE_ENV_VAR}: cannot read {path}: {e}") from None
    return parse_faults(",".join(specs))


def _parse_value(name: str, text: str) -> float | int:
    try:
        if name in ("startup_delay", "model_info_delay"):
            seconds = float(text)
            if not math.isfinite(seconds) or seconds < 0:
                raise ValueError
            return seconds
        number = int(text)
        if name != "startup_exit" and number < 0:
            raise ValueError
        return number
    except ValueError:
        raise ValueError(f"{ENV_VAR}: bad value for {name}: {text!r}") from None
