"""All runtime configuration in one frozen place, read from ``LINKFLOW_*`` environment variables."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ROLES = ("api", "orchestrator", "executor", "views")
"""The roles of ``linkflow run --roles``; a process has all four unless told otherwise."""


class Settings(BaseSettings):
    """Engine settings. Every field can be set as ``LINKFLOW_<FIELD>``.

    Traces are configured by OpenTelemetry's own ``OTEL_*`` variables, not here (off unless they
    name an exporter or an OTLP endpoint): see ``linkflow_stream/tracing/provider.py``."""

    model_config = SettingsConfigDict(env_prefix="LINKFLOW_", frozen=True, extra="ignore")

    bootstrap_servers: str = "127.0.0.1:9092"
    """Kafka bootstrap servers. Default ``127.0.0.1:9092`` (the broker ``make run`` starts)."""

    topic_prefix: str = ""
    """Prefix put before every topic name, so several engines can share a broker. Default empty."""

    topics_env: str | None = None
    """The ``[environments.<name>]`` of ``topics/topics.toml`` whose replication factor and
    ``min.insync.replicas`` ``linkflow topics apply`` gives the topics: ``dev`` (1 and 1) or
    ``cluster`` (3 and 2). Default unset: derived from the brokers the cluster lists at apply time,
    the environment with the largest replication factor that many brokers hold (one broker: ``dev``;
    three or more: ``cluster``). Pin it in production, so that an apply during a broker outage
    fails instead of creating under-replicated topics."""

    schema_registry_url: str | None = None
    """Base URL of a schema registry's Confluent-compatible API: Confluent Schema Registry's root,
    or Apicurio Registry's ``/apis/ccompat/v7`` (``linkflow schema-registry start`` runs one). Set, the
    engine (and ``linkflow topics apply``) registers every topic's value schema under
    ``<topic>-value`` and writes values in the Confluent wire format (magic ``0`` + schema id), so
    tools such as Kafka UI decode them; it reads both that and the single-object encoding. Set the
    same in every process of a deployment: a process without it cannot read the registry's ids.
    Default unset: values are Avro single-object encoded (ADR 0025)."""

    app_id: str = "linkflow"
    """Consumer-group and transactional-id base name. Default ``linkflow``."""

    api_host: str = "127.0.0.1"
    """Interface the execution API and the worker registry listen on. Default ``127.0.0.1``: only
    this machine can reach them. Set ``0.0.0.0`` (or an address) to serve others; the engine then
    requires API keys (see ``auth``)."""

    auth: Literal["required", "disabled"] | None = None
    """``required``: every route but ``/healthz``, ``/readyz``, ``/metrics``, ``/openapi.json`` and
    ``/docs`` needs ``Authorization: Bearer <key>`` (``linkflow keys create``), and the engine
    refuses to start while no key exists. ``disabled``: no keys, every caller is an admin of every
    team; allowed on any interface, with a warning at every start when not on loopback. Default
    unset: disabled while ``api_host`` is a loopback address, required otherwise."""

    api_port: int = 8084
    """Port of the execution API. Default ``8084``."""

    registry_port: int = 8085
    """Port of the worker registry API. Default ``8085``."""

    api_listen_backlog: int = Field(default=1024, ge=1)
    """Connections the kernel completes and queues for each HTTP port while the engine's event
    loop is busy; a connect beyond the queue is dropped, and its client sends it again only 1 s
    later (then at 3, 7, 15 s). The kernel caps it at ``net.core.somaxconn`` (4096 on current
    Linux): for larger bursts raise both. Default ``1024`` (ADR 0072)."""

    data_dir: Path = Path(".linkflow")
    """Where local engine files live. Default ``.linkflow``."""

    views_url: str | None = None
    """Where the read model (status, logs, costs) is stored: ``postgresql://user:pass@host/db``
    to share one between instances, or ``sqlite:///path``. Default: ``<data_dir>/views.sqlite3``."""

    views_finished_cache: int = Field(default=1024, ge=0)
    """Finished runs kept in memory after they end, for reads right after; older ones are read
    from the store. Default ``1024``."""

    views_row_delay_seconds: float = Field(default=1.0, ge=0, le=60)
    """How long a live run's row in the read-model store may stay behind memory (ADR 0063): a
    run's row is written when it ends and at most this often while it lives, and the stored
    positions stay at the first record a row does not hold yet (a restart folds those records
    again). Pages of runs and cost reports write the rows behind first; another instance
    sharing the store sees a live run's row up to this late. ``0``: at every batch that changes
    it. Default ``1``."""

    retention_days: float = Field(default=30.0, gt=0)
    """How long a finished run stays in the read model before a background job deletes it.
    Default ``30``."""

    retention_check_seconds: float = Field(default=300.0, gt=0)
    """How often that job looks for runs past their retention. Default ``300``."""

    executor_slots: int | None = Field(default=None, ge=1)
    """Node tasks of each pool one process runs at once. Default unset: the pool's ``slots`` in
    ``topics/topics.toml`` (``default``: 64, ``gpu``: 2)."""

    executor_pools: Annotated[tuple[str, ...], NoDecode] = ("default",)
    """Worker pools (``[[pool]]`` of ``topics/topics.toml``) whose task topics
    ``linkflow.tasks.<pool>.<priority>`` this process consumes, comma-separated
    (``default,gpu``); ``linkflow run --pools`` sets it. Default ``default``."""

    roles: Annotated[tuple[str, ...], NoDecode] = ROLES
    """What this process does, comma-separated, of ``api`` (the execution API, the worker
    registry and the ``linkflow.start`` intake; needs ``views``), ``orchestrator``, ``executor``
    and ``views`` (the read model); ``linkflow run --roles`` sets it. Default all four."""

    heartbeat_seconds: float = Field(default=5.0, gt=0)
    """How often a process heartbeats to the worker registry; a worker silent for three of its
    heartbeats shows ``down``. Default ``5``."""

    pool_drain_seconds: float = Field(default=30.0, gt=0)
    """The time ``linkflow_pool_desired_workers`` sizes a pool to finish its backlog and running
    tasks in (ADR 0028). Default ``30``."""

    @field_validator("executor_pools", "roles", mode="before")
    @classmethod
    def _names(cls, value: object) -> object:
        """``a,b`` (the environment, the CLI), a JSON list, or a sequence."""
        if isinstance(value, str) and value.lstrip().startswith("["):
            value = json.loads(value)
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if isinstance(value, list | tuple):
            return tuple(dict.fromkeys(value))  # each once, in the order given
        return value

    orchestrator_batch_max: int = Field(default=256, ge=1)
    """Inputs the orchestrator decides before one shared wait for the broker's acks. Default ``256``."""

    priority_weights: Annotated[tuple[int, int, int], NoDecode] = (8, 3, 1)
    """Weights of the high, normal and low priorities, as ``"8,3,1"`` (three integers of at least
    1). When the engine is saturated, each orchestrator batch gives every priority with work about
    a share of its start requests in these proportions (at least one), and the executor takes
    tasks in weighted turns the same way: high runs go first, and low ones never starve. Default
    ``8,3,1`` (ADR 0029)."""

    @field_validator("priority_weights", mode="before")
    @classmethod
    def _priority_weights(cls, value: object) -> object:
        if isinstance(value, str):
            parts = [p.strip() for p in value.strip().strip("[]()").split(",")]
            try:
                value = tuple(int(p) for p in parts)
            except ValueError:
                raise ValueError(f"three integers like 8,3,1 expected, not {value!r}") from None
        return value

    @field_validator("priority_weights")
    @classmethod
    def _positive_weights(cls, value: tuple[int, int, int]) -> tuple[int, int, int]:
        if any(w < 1 for w in value):
            raise ValueError("every priority weight must be at least 1 (a weight of 0 would starve)")
        return value

    max_overdue_sends: int = Field(default=1000, ge=1)
    """How many of the HTTP API's sends Kafka may leave unacknowledged past their 10 s wait (each
    answered 503, each still held by the Kafka client, retrying) before further requests that
    send are refused at once, unsent: a 503 that says so. Default ``1000``. Bounds the memory a
    broker outage costs when clients retry every 503."""

    merge_inline_attempts: bool = True
    """Write an inline node's attempt (transform, condition) as the one event that ends it,
    carrying the start's ``dispatch`` (ADR 0056; 8 events for a five-node diamond instead of 13).
    ``false`` writes ``node_started`` and the end as two events, as releases before ADR 0056 did:
    set it on the orchestrators while any process of such a release still reads the log (its
    ``evolve`` refuses the one-event form), during a rolling upgrade; readers of this release
    read both forms."""

    event_loop: Literal["uvloop", "asyncio"] = "uvloop"
    """The engine process's event loop (ADR 0062): uvloop, or asyncio's own (to tell a problem of
    uvloop's from ours)."""

    offsets_in_transaction: bool = False
    """Move the orchestrator group's offsets inside each batch's transaction, as releases before
    ADR 0061 did (two more round trips a batch), and keep no positions record on the changelog: a
    claim replaces the one it finds by the group's offsets. By default a batch commits its input
    positions as a changelog record, a claim resumes from them, and the group's offsets follow
    outside the transaction for operators. A release before ADR 0061 resumes from the group's
    offsets alone and cannot read a positions record: set this on every orchestrator while a
    process of such a release may claim a partition (a rolling upgrade), and before going back to
    one (restart every orchestrator with it first, so that every partition is claimed once)."""

    orchestrator_batches_at_once: int = Field(default=1, ge=0)
    """How many of its partitions' batches one orchestrator process decides and commits at once;
    ``0``: each owned partition's whenever it has inputs. Default ``1``: the others' inputs gather
    meanwhile, so a batch carries more of them and a process makes fewer transactions (ADR 0052:
    at 32 callers 6 runs a transaction instead of 3, and 7-13% more runs a second on two cores)."""

    orchestrator_batch_wait_seconds: float = Field(default=0.05, gt=0)
    """Longest a fetch of the orchestrator's inputs waits at the broker when none have arrived.
    Default ``0.05``. The broker answers as soon as a record arrives, so it adds no latency
    (diamond p50 at one caller 20-22 ms at 0.5 ms and at 50 ms); shorter waits only poll more:
    at 0.5 ms an idle engine used a third of a core, at 50 ms a sixth (docs/performance.md)."""

    lease_grace_seconds: float = 5.0
    """Time beyond a node's timeout before its task is presumed lost and dispatched again.
    Default ``5.0``."""

    session_timeout_seconds: float = 10.0
    """Kafka group session timeout: how long a killed instance keeps its partitions.
    Default ``10.0``."""

    stop_timeout_seconds: float = Field(default=30.0, gt=0)
    """How long a stop (SIGINT, SIGTERM) may take before the process exits without finishing it,
    as a crash would (exit code 6; a second signal does the same at once): a stop waits for the
    broker, and with the broker away it waited for ever. Default ``30.0``."""

    commit_interval_seconds: float = 0.5
    """How often the executor commits the task offsets it consumed (the orchestrator commits
    in its transactions). Default ``0.5``."""

    finished_state_ttl_seconds: float = Field(default=60.0, ge=0)
    """How long the orchestrator keeps a finished run's state (for late results and commands)
    before it tombstones it from the changelog and forgets it. Every claim reads these states
    back, so a long time to live makes takeovers and restarts under load slow (300 s at 83 runs/s
    held 25,000 states: about 3 s per claim); a later input for a forgotten run is counted as an
    orphan and dropped, never a new run. Default ``60``."""

    http_allow_private_networks: bool = False
    """Let HTTP nodes call addresses that are not globally routable (loopback, private,
    link-local, carrier-grade NAT, ...). Default ``False``: only global addresses. The cloud
    metadata and credentials addresses stay refused either way (see ``nodes/network_guard.py``)."""

    secrets: dict[str, SecretStr] = Field(default_factory=dict)
    """Named secrets for node configs (``{"secret": "NAME"}``), as JSON in ``LINKFLOW_SECRETS``.
    A name missing here is looked up in ``LINKFLOW_SECRET_<NAME>``. Default empty."""

    databases: dict[str, SecretStr] = Field(default_factory=dict)
    """Named database connections for ``db`` nodes, as JSON in ``LINKFLOW_DATABASES``:
    ``{"main": "postgresql://user:pass@host/db", "local": "sqlite:////var/data/app.db"}``.
    Default empty."""

    code_warm_sandboxes: int = Field(default=2, ge=0, le=64)
    """Pre-started sandboxes for ``code`` nodes (each is used once). Default ``2``."""

    code_bwrap: str = "bwrap"
    """The bubblewrap executable ``code`` nodes run user code in: a name looked up on ``PATH``,
    or a path. Code runs only inside it (ADR 0020): where it is missing or may not create
    namespaces, code nodes fail with ``code_error`` and the engine logs the fix at start.
    Default ``bwrap``."""

    code_kill_grace_seconds: float = Field(default=2.0, ge=0, le=60)
    """How long a ``code`` node that ran out of time has between SIGTERM and SIGKILL, unless its
    config sets ``kill_grace_seconds``. Both fall inside the node's timeout: SIGTERM comes that
    long before the end (at most half the wall clock), so the attempt still ends within
    ``timeout_seconds``. 0: SIGKILL at once. Default ``2.0``."""

    max_queued_per_team: int = Field(default=0, ge=0)
    """Admission control: the most runs a team may have queued (accepted, not yet running; counted
    in this instance's status view). A start beyond it is refused: ``POST /api/executions``
    answers 429 with ``Retry-After``, a ``linkflow.start`` record goes to the DLQ with the reason
    ``too_many_requests``. Runs of workflows without a team count as one team. Default ``0``: no
    limit."""

    admission_retry_after_seconds: int = Field(default=5, ge=1, le=3600)
    """The ``Retry-After`` (seconds) of a start refused by ``max_queued_per_team``. Default ``5``."""

    http_timeout_seconds: float = 30.0
    """Default timeout of an HTTP node. Default ``30.0``."""

    node_output_max_bytes: int = Field(default=1024 * 1024, ge=1024)
    """Largest node output (as JSON) a task may return; a larger one fails the node with
    ``resource_limit``. Default 1 MiB."""

    http_max_response_bytes: int = 1024 * 1024
    """Largest HTTP response body a node accepts. Default 1 MiB (the node output cap)."""

    team_starts_per_second: float | None = Field(default=None, gt=0)
    """Runs a team may start per second through ``POST /api/executions`` on this API instance
    (a token bucket per team; over it: 429 with ``Retry-After``). Default ``None``: no limit."""

    team_starts_burst: int | None = Field(default=None, ge=1)
    """Starts a team may make at once above its rate (the bucket's size). Default ``None``: the
    rate rounded up, at least 1. Used only with ``team_starts_per_second``."""

    team_max_running: int | None = Field(default=None, ge=1)
    """Most runs of one team running at once; the rest wait ``queued`` and teams with queued runs
    are admitted in turn (ADR 0030). Set it on every orchestrator of a deployment alike: with it,
    every run passes the concurrency gate. Default unset: no team cap (only workflows with a
    ``concurrency`` limit are gated)."""

    def group(self, role: str) -> str:
        """The consumer group of a role (``orchestrator``, ``executor``); also the orchestrator's
        transactional-id base."""
        return f"{self.app_id}.{role}"

    def topic(self, name: str) -> str:
        """The real topic name for a logical one, with the configured prefix."""
        return f"{self.topic_prefix}{name}"
