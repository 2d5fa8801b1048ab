"""MLX_WORKER_FAULTS_FILE: faults read from a file at start-up, added to MLX_WORKER_FAULTS."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlx_worker.faults import ENV_VAR, FILE_ENV_VAR, Faults, load_faults


def test_no_variables_means_no_faults() -> None:
    assert load_faults({}) == Faults()


def test_file_adds_to_the_variable(tmp_path: Path) -> None:
    path = tmp_path / "faults"
    path.write_text("startup_delay=1.5\nignore_sigterm\n")
    faults = load_faults({ENV_VAR: "engine_stall_after_steps=3", FILE_ENV_VAR: str(path)})
    assert faults == Faults(startup_delay=1.5, ignore_sigterm=True, engine_stall_after_steps=3)


def test_missing_or_empty_file_is_no_fault(tmp_path: Path) -> None:
    assert load_faults({FILE_ENV_VAR: str(tmp_path / "absent")}) == Faults()
    (tmp_path / "empty").write_text("")
    assert load_faults({FILE_ENV_VAR: str(tmp_path / "empty")}) == Faults()


def test_bad_entry_in_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "faults"
    path.write_text("startup_delay=soon")
    with pytest.raises(ValueError, match="startup_delay"):
        load_faults({FILE_ENV_VAR: str(path)})


def test_unreadable_path_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=FILE_ENV_VAR):
        load_faults({FILE_ENV_VAR: str(tmp_path)})  # a directory


def test_sigkill_faults_parse() -> None:
    faults = load_faults({ENV_VAR: "sigkill_after_steps=2,sigkill_at_hand_over"})
    assert faults == Faults(sigkill_after_steps=2, sigkill_at_hand_over=True)
    with pytest.raises(ValueError, match="sigkill_at_hand_over takes no value"):
        load_faults({ENV_VAR: "sigkill_at_hand_over=1"})


def test_delays_take_seconds_and_refuse_negative_ones() -> None:
    assert load_faults({ENV_VAR: "model_info_delay=0.5"}) == Faults(model_info_delay=0.5)
    with pytest.raises(ValueError, match="model_info_delay"):
        load_faults({ENV_VAR: "model_info_delay=-1"})
