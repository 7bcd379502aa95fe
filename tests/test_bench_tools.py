"""The benchmark helpers that decide what an arm runs: a wrong parse measures the wrong thing."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import call_split  # noqa: E402


def test_floor_arm_reads_leading_assignments_as_the_environment_like_a_shell():
    assert call_split.floor_arm("GRPC_EXPERIMENTS=-a,-b B_2='x y' --fixed --ort-config k=v") == (
        ("--fixed", "--ort-config", "k=v"), {"GRPC_EXPERIMENTS": "-a,-b", "B_2": "x y"})
    # an option's own KEY=VALUE argument is not an assignment: only words before the first option are
    assert call_split.floor_arm("--ort-config session.force_spinning_stop=1") == (
        ("--ort-config", "session.force_spinning_stop=1"), {})
    assert call_split.floor_arm("A=1") == ((), {"A": "1"})
    assert call_split.floor_arm("") == ((), {})
    assert call_split.floor_arm("1A=x --fixed") == (("1A=x", "--fixed"), {})  # not a variable name
