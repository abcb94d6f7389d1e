"""The fuzz target of ``make fuzz`` runs, on a few thousand cases, in every ``make test``."""

from __future__ import annotations

from tests import fuzz_first_stage


def test_the_first_stage_fuzz_target_finds_nothing_on_a_small_sample() -> None:
    assert fuzz_first_stage.main(["--cases", "3000", "--files", "6", "--seed", "7"]) == 0
