"""The input positions record on the changelog (ADR 0061): its bytes, and where a claim resumes."""

from __future__ import annotations

import pytest
from aiokafka import TopicPartition

from linkflow_stream.core.errors import ValidationError
from linkflow_stream.core.start_request import check_execution_id
from linkflow_stream.runtime.positions import (
    POSITIONS_KEY,
    PositionsError,
    beyond_the_logs,
    positions_record,
    read_positions,
    resume_from,
)

A = TopicPartition("p.linkflow.requests.normal", 3)
B = TopicPartition("p.linkflow.results", 3)


def test_a_positions_record_reads_back_as_the_positions_of_its_partition() -> None:
    record = positions_record("p.linkflow.state.executions", 3, {A: 7, B: 0})
    assert (record.topic, record.partition, record.key) == ("p.linkflow.state.executions", 3, POSITIONS_KEY)
    assert record.value is not None
    assert read_positions(record.value, 3) == {A: 7, B: 0}


def test_no_run_can_have_the_positions_key() -> None:
    with pytest.raises(ValidationError):
        check_execution_id(POSITIONS_KEY.decode())


@pytest.mark.parametrize(
    "value",
    [b"", b"not json", b"[]", b'{"other": {}}', b'{"positions": {"t": -1}}', b'{"positions": {"t": "1"}}'],
)
def test_a_value_that_is_no_positions_record_is_refused_saying_so(value: bytes) -> None:
    with pytest.raises(PositionsError, match="positions"):
        read_positions(value, 0)


def test_a_claim_resumes_from_the_larger_of_the_changelog_and_the_group() -> None:
    """The group's offsets follow the changelog a moment late (lower), or were moved by an older
    release's transaction after the record was written (higher); an input the record does not
    name resumes from the group's offset."""
    changelog = {A: 10, B: 4}
    group = {A: 8, B: 6, TopicPartition("p.linkflow.commands", 3): 2}
    assert resume_from(changelog, group) == {A: 10, B: 6, TopicPartition("p.linkflow.commands", 3): 2}
    assert resume_from({}, group) == group


def test_a_position_past_its_logs_end_is_found() -> None:
    """A log deleted and made again starts from 0 again; its old position would skip it all."""
    assert beyond_the_logs({A: 10, B: 4}, {A: 2, B: 4}) == [A]
    assert beyond_the_logs({A: 10}, {}) == [], "a log whose end is not known is left as it is"
