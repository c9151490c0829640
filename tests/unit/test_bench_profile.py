"""bench.profile's table: each sample's stage, and a waiting pool thread's samples kept out."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.profile import IDLE, py_spy_argv, seconds_per_event, stage_of, stages

MAIN = "<module> (linkflow_stream/cli.py:10);run (asyncio/runners.py:190)"
POOL = "Thread._bootstrap (threading.py:995);Thread.run (threading.py:975)"


def test_a_sample_takes_the_stage_of_its_innermost_named_frame() -> None:
    fold = f"{MAIN};ReadModel._fold (projections/read_model.py:300)"
    assert stage_of(f"{fold};Codec.decode (linkflow_stream/kafka/codec.py:360)") == "Avro codec + models"
    assert stage_of(fold) == "read model: fold + render"
    assert stage_of("main (somewhere.py:1)") == "other"
    # the compiled Avro reader and writer live in linkflow_stream/kafka/ but are the codec's
    reader = "LogReader._run (linkflow_stream/kafka/log_reader.py:90)"
    read = "compile_reader.<locals>.read (linkflow_stream/kafka/avro_reader.py:88)"
    assert stage_of(f"{MAIN};{reader};{read};read_long (linkflow_stream/kafka/avro_reader.py:33)") == (
        "Avro codec + models"
    )
    written = "write_json (linkflow_stream/kafka/avro_writer.py:55);dumps (json/__init__.py:231)"
    assert stage_of(f"{MAIN};{written}") == "Avro codec + models"
    fetch = "Fetcher._proc_fetch_request (aiokafka/consumer/fetcher.py:747)"
    assert stage_of(f"{MAIN};{reader};{fetch}") == "Kafka client"


def test_a_pool_thread_waiting_for_work_is_idle_and_one_at_work_is_not() -> None:
    raw = "\n".join(
        [
            f"{POOL};_worker (concurrent/futures/thread.py:81) 30",
            f"{POOL};_worker (/usr/lib/python3.11/concurrent/futures/thread.py:81) 5",
            f"{POOL};_worker (concurrent/futures/thread.py:83);run (projections/store/sqlite.py:200) 7",
            f"{MAIN};ReadModel._fold (projections/read_model.py:300) 11",
            "not a sample line",
        ]
    )
    counts = stages(raw)
    assert counts[IDLE] == 35
    assert counts["read model: store"] == 7
    assert counts["read model: fold + render"] == 11
    assert sum(counts.values()) == 53


def test_a_stage_costs_its_share_of_the_cpu_or_with_gil_samples_the_time_they_stand_for() -> None:
    # 30 of 120 samples, 4 s of process CPU, 2000 events: a quarter of the CPU, 500 us an event
    assert seconds_per_event(30, 120, events=2000, cpu=4.0, rate=None) == pytest.approx(500e-6)
    # GIL samples at 200 a second: 30 samples are 0.15 s the GIL was held, whatever the CPU
    # (its SQLite thread runs without the GIL and is not in them)
    assert seconds_per_event(30, 120, events=2000, cpu=4.0, rate=200) == pytest.approx(75e-6)
    assert seconds_per_event(30, 120, events=0, cpu=4.0, rate=200) == pytest.approx(0.15)


def test_gil_sampling_is_asked_of_py_spy_only_when_wanted() -> None:
    assert "--gil" in py_spy_argv(1, Path("x.txt"), "raw", 20, 200, gil=True)
    assert "--gil" not in py_spy_argv(1, Path("x.txt"), "raw", 20, 200, gil=False)
