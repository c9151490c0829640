"""Admission control (issue 11, item 4): a team may have at most ``LINKFLOW_MAX_QUEUED_PER_TEAM``
runs queued; a start beyond that is refused before it is accepted. Pure: the count is passed in.

"Queued" is what the status view holds for the team that has not started running: runs accepted
and not yet started (no event folded), plus started runs whose status is ``queued`` (waiting for
a concurrency slot). A workflow's team is the team of the key that registered it; workflows
without one count as one team, ``none`` in metrics. The count is this instance's view of the log:
exact for starts accepted here, a moment behind for those accepted elsewhere (the start intake
syncs the views before it counts, so it sees everything the log held when its batch began).

Both paths count a refusal in ``linkflow_admission_rejected_total{path, team}``: ``path="http"``
for ``POST /api/executions`` (429 with ``Retry-After``), ``path="kafka"`` for a
``linkflow.start`` record (dead-lettered with the reason ``too_many_requests: ...``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from linkflow_stream.core.errors import LinkflowError

NO_TEAM = "none"
"""The ``team`` label of refusals for workflows without a team."""


class TooManyRequestsError(LinkflowError):
    """A start refused because its team has too many runs queued (HTTP 429); retry after
    ``retry_after_seconds``."""

    error_type = "too_many_requests"
    retryable = True

    def __init__(self, message: str, *, team: str | None, retry_after_seconds: int) -> None:
        super().__init__(message)
        self.team = team
        self.retry_after_seconds = retry_after_seconds

    @property
    def team_label(self) -> str:
        return self.team or NO_TEAM


@dataclass(frozen=True)
class Admission:
    """The rule; ``queued(team)`` counts the team's queued runs (``StatusView.queued_of_team``)."""

    max_queued_per_team: int
    retry_after_seconds: int
    queued: Callable[[str | None], int]

    @property
    def limited(self) -> bool:
        return self.max_queued_per_team > 0

    def check(self, team: str | None, *, also_queued: int = 0) -> None:
        """Raise ``TooManyRequestsError`` when one more run of ``team`` would exceed the limit;
        ``also_queued``: runs accepted but not in the view yet (the intake's current batch)."""
        if not self.limited:
            return
        queued = self.queued(team) + also_queued
        if queued >= self.max_queued_per_team:
            who = f"team {team!r} has" if team else "workflows without a team have"
            raise TooManyRequestsError(
                f"{who} {queued} runs queued, the most allowed (LINKFLOW_MAX_QUEUED_PER_TEAM="
                f"{self.max_queued_per_team}); try again in {self.retry_after_seconds}s",
                team=team,
                retry_after_seconds=self.retry_after_seconds,
            )
