"""``bench.shapes.why_failed``: a failed run in the shapes table says why."""

from __future__ import annotations

from bench.shapes import expected, why_failed


def test_a_success_with_the_expected_output_is_no_failure() -> None:
    sink, output = expected("fanout", 5, 3)
    body = {"id": "r1", "status": "success", "nodes": {sink: {"output": output}}}
    assert why_failed(200, body, sink, output) is None


def test_each_kind_of_failure_names_what_went_wrong() -> None:
    sink, output = expected("chain", 5, 1)
    error = {"error_class": "network", "message": "connection reset"}
    failed = {"id": "r2", "status": "failed", "nodes": {"n2": {"error": error}, sink: {"output": None}}}
    assert why_failed(200, failed, sink, output) == f"run r2 failed; node n2: {error}"
    wrong = {"id": "r3", "status": "success", "nodes": {sink: {"output": {"n": 0}}}}
    assert why_failed(200, wrong, sink, output) == f"run r3: {sink} output {{'n': 0}}, expected {output!r}"
    assert why_failed(504, {"error": "timed out"}, sink, output) == "HTTP 504: {'error': 'timed out'}"
