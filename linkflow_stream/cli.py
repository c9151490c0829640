"""The ``linkflow`` command: run the engine, manage the dev broker and the topics, and drive a
running engine through its API (``workflows``, ``executions``, over ``linkflow_stream.client``)."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import re
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, Literal, TextIO, cast

import click
from aiokafka.errors import KafkaConnectionError, KafkaTimeoutError

from linkflow_stream.core import topic_names
from linkflow_stream.core.auth import TEAM, Role
from linkflow_stream.core.errors import LinkflowError
from linkflow_stream.core.events import EventType, ExecutionEvent
from linkflow_stream.dev.broker import Broker, BrokerError, StartOutcome
from linkflow_stream.dev.cluster import Cluster
from linkflow_stream.kafka.topics import TopicSpecError, apply_topics, load_specs, topic_environment
from linkflow_stream.settings import Settings

if TYPE_CHECKING:
    from linkflow_stream.client import Client

LOG_LEVELS = click.Choice(["debug", "info", "warning", "error", "critical"], case_sensitive=False)
"""A level Python's logging knows (an unknown one was a traceback after the broker had started)."""


class _Commands(click.Group):
    """The command group; a command that talks to Kafka itself (events, keys, replay, topics) and
    finds no broker ends with one line and exit code 4, as the HTTP commands do, not a traceback.
    Only "no broker answers" is caught: any other Kafka error (authorization, a missing topic) and
    a closed pipe (``| head``, which click handles) pass as they are."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (KafkaConnectionError, KafkaTimeoutError, ConnectionRefusedError) as exc:
            click.echo(
                f"error: Kafka did not answer ({exc!r}); is the broker up (linkflow kafka start)?", err=True
            )
            raise SystemExit(EXIT_UNAVAILABLE) from exc


@click.group(cls=_Commands)
def main() -> None:
    """LinkFlow Stream: workflow execution on Apache Kafka."""


@main.command()
@click.option(
    "--loglevel",
    default="info",
    show_default=True,
    envvar="LINKFLOW_LOG_LEVEL",
    type=LOG_LEVELS,
    help="level of the engine's own logs (env LINKFLOW_LOG_LEVEL); aiokafka and aiohttp log at warning",
)
@click.option(
    "--roles",
    default=None,
    help="what this process does, comma-separated, of api,orchestrator,executor,views "
    "(env LINKFLOW_ROLES; default all four; api needs views)",
)
@click.option(
    "--pools",
    default=None,
    help="the worker pools (declared in topics/topics.toml) whose tasks this process runs, "
    "comma-separated, e.g. default,gpu (env LINKFLOW_EXECUTOR_POOLS; default default)",
)
def run(loglevel: str, roles: str | None, pools: str | None) -> None:
    """Run the engine (API, orchestrator, executor, views, or the --roles given) in the foreground."""
    from linkflow_stream.engine import StopAbandonedError, exit_abandoned, placement_problem
    from linkflow_stream.engine import run as run_engine

    chosen: dict[str, Any] = {}
    if roles is not None:
        chosen["roles"] = roles
    if pools is not None:
        chosen["executor_pools"] = pools
    settings = Settings(**chosen)
    problem = placement_problem(settings)
    if problem is not None:
        raise click.UsageError(problem)
    try:
        run_engine(settings, loglevel=loglevel)
    except StopAbandonedError:
        exit_abandoned()


@main.group()
def kafka() -> None:
    """A real Kafka (KRaft) broker, or a three-node cluster, from Maven Central, for development and tests."""


def _broker(data_dir: Path, port: int) -> Broker:
    return Broker(data_dir=data_dir.resolve(), port=port)


DATA_DIR = click.option(
    "--data-dir",
    type=click.Path(path_type=Path),
    default=Path(".linkflow/kafka"),
    show_default=True,
    help="the broker's files: config, storage, logs, pid file",
)
CACHE_DIR = Path(".linkflow")


def _start_broker(broker: Broker | Cluster) -> None:
    """Start the broker (or cluster), or reuse the one already running from its data dir; say which."""
    click.echo(f"Kafka on {broker.bootstrap} (data in {broker.data_dir}) ...")
    started_at = time.monotonic()
    try:
        outcome = broker.start(cache_dir=CACHE_DIR.resolve(), progress=lambda line: click.echo(f"  {line}"))
    except BrokerError as exc:
        raise click.ClickException(exc.message) from exc
    pids = ", ".join(str(pid) for pid in broker.pids) if isinstance(broker, Cluster) else str(broker.pid)
    if outcome is StartOutcome.REUSED:
        click.echo(f"Kafka already running at {broker.bootstrap} (pid {pids}): reusing it")
    else:
        elapsed = time.monotonic() - started_at
        click.echo(f"Kafka ready at {broker.bootstrap} (pid {pids}) in {elapsed:.1f}s")


@kafka.command("start")
@DATA_DIR
@click.option(
    "--port",
    default=9092,
    show_default=True,
    help="the client port on 127.0.0.1; with --brokers 3, node 0's: nodes 1 and 2 take PORT+1 and "
    "PORT+2, and the controllers PORT+3 to PORT+5",
)
@click.option(
    "--brokers",
    type=click.Choice(["1", "3"]),
    default="1",
    show_default=True,
    help="1: a single broker+controller; 3: a cluster of three (replication 3 with min ISR 2 for "
    "the internal topics; `topics apply` then uses the `cluster` environment), each node in "
    "DATA_DIR/node-N",
)
def kafka_start(data_dir: Path, port: int, brokers: str) -> None:
    """Start the broker (or cluster) and wait until it answers; reuse it if it runs already.

    Fetches the jars with Maven and formats storage the first time. A pid file left by a broker
    that is gone (kill -9) is cleaned up. A cluster is ready when every node answers a metadata
    request that lists all three brokers."""
    if brokers == "1":
        cluster = Cluster.found_in(data_dir.resolve())
        if cluster is not None and cluster.pids:
            raise click.ClickException(
                f"a {cluster.size}-broker cluster runs from {data_dir}: stop it first "
                f"(linkflow kafka stop --data-dir {data_dir}) or start with --brokers {cluster.size}"
            )
        _start_broker(_broker(data_dir, port))
    else:
        _start_broker(Cluster(data_dir=data_dir.resolve(), port=port, size=int(brokers)))


@kafka.command("stop")
@DATA_DIR
def kafka_stop(data_dir: Path) -> None:
    """Stop the broker, or every node of the cluster, started by ``linkflow kafka start`` (a
    controlled shutdown each)."""
    cluster = Cluster.found_in(data_dir.resolve())
    stopped = cluster is not None and cluster.stop()
    if _broker(data_dir, 0).stop() or stopped:
        click.echo("Kafka stopped")
    else:
        click.echo(f"no Kafka broker running from {data_dir}")


@main.group("schema-registry")
def schema_registry() -> None:
    """A real schema registry (Apicurio Registry from Maven Central, schemas in memory) for
    development and tests: point LINKFLOW_SCHEMA_REGISTRY_URL at the URL `start` prints."""


REGISTRY_DATA_DIR = click.option(
    "--data-dir",
    type=click.Path(path_type=Path),
    default=Path(".linkflow/schema-registry"),
    show_default=True,
    help="the registry's files: pid file, log",
)


@schema_registry.command("start")
@REGISTRY_DATA_DIR
@click.option("--port", default=8081, show_default=True, help="the HTTP port on 127.0.0.1")
def schema_registry_start(data_dir: Path, port: int) -> None:
    """Start the registry and wait until its API answers; reuse it if it runs already.

    Fetches the application with Maven the first time. It keeps schemas in memory: a restart
    forgets every id, so records written through it before cannot be read after."""
    from linkflow_stream.dev.registry import RegistryError, SchemaRegistryServer, StartOutcome

    server = SchemaRegistryServer(data_dir=data_dir, port=port)
    started_at = time.monotonic()
    try:
        outcome = server.start(cache_dir=CACHE_DIR.resolve(), progress=lambda line: click.echo(f"  {line}"))
    except RegistryError as exc:
        raise click.ClickException(exc.message) from exc
    verb = "already running" if outcome is StartOutcome.REUSED else "ready"
    elapsed = time.monotonic() - started_at
    click.echo(f"schema registry {verb} (pid {server.pid}, {elapsed:.1f}s); set")
    click.echo(f"  LINKFLOW_SCHEMA_REGISTRY_URL={server.url}")


@schema_registry.command("stop")
@REGISTRY_DATA_DIR
def schema_registry_stop(data_dir: Path) -> None:
    """Stop the registry started by `linkflow schema-registry start`."""
    from linkflow_stream.dev.registry import SchemaRegistryServer

    if SchemaRegistryServer(data_dir=data_dir).stop():
        click.echo("schema registry stopped")
    else:
        click.echo(f"no schema registry running from {data_dir}")


@main.command()
@DATA_DIR
@click.option("--kafka-port", default=9092, show_default=True, help="the broker's client port on 127.0.0.1")
@click.option(
    "--loglevel",
    default="info",
    show_default=True,
    envvar="LINKFLOW_LOG_LEVEL",
    type=LOG_LEVELS,
    help="level of the engine's own logs (env LINKFLOW_LOG_LEVEL)",
)
def dev(data_dir: Path, kafka_port: int, loglevel: str) -> None:
    """Start (or reuse) the dev broker, apply the topics, run the engine; stop both on Ctrl-C.

    What ``make run`` runs. The engine uses this broker whatever LINKFLOW_BOOTSTRAP_SERVERS says.
    The broker is stopped on SIGINT, SIGTERM or SIGHUP at any point, also when it was reused from
    an earlier run; after a kill -9 it keeps running, and the next ``linkflow dev`` reuses it."""
    from linkflow_stream.engine import StopAbandonedError, exit_abandoned
    from linkflow_stream.engine import run as run_engine  # imported here: keeps --help fast

    lock = _one_dev_per_data_dir(data_dir)  # held until this process ends, kill -9 included
    broker = _broker(data_dir, kafka_port)
    owned = False  # a broker refused for reuse (another port) is not ours to stop
    abandoned = False  # the engine's stop was cut short: the process ends hard, after the broker
    # Each stops everything, also while the broker starts (until the engine takes over SIGINT and
    # SIGTERM). SIGINT is set even when inherited as ignored, as a job started with `&` by a script
    # has it: the engine reacts to it anyway. An ignored SIGHUP (nohup) stays ignored.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        if sig != signal.SIGHUP or signal.getsignal(sig) != signal.SIG_IGN:
            signal.signal(sig, _interrupt)
    try:
        _start_broker(broker)
        owned = True
        settings = Settings(bootstrap_servers=broker.bootstrap)
        for line in asyncio.run(apply_topics(settings)) or ["all topics already exist"]:
            click.echo(line)
        run_engine(settings, loglevel=loglevel)
    except StopAbandonedError:
        abandoned = True
    except KeyboardInterrupt:
        click.echo("interrupted")
    except TopicSpecError as exc:
        raise click.ClickException(exc.message) from exc
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # nothing may cut the stop short
            signal.signal(sig, signal.SIG_IGN)
        if (owned or broker.process is not None) and broker.pid is not None:
            _say(f"stopping Kafka (pid {broker.pid}) ...")
            broker.stop()
            _say("Kafka stopped")
        lock.close()  # the next `linkflow dev` on this data dir may start
        if abandoned:
            exit_abandoned()


def _one_dev_per_data_dir(data_dir: Path) -> TextIO:
    """An exclusive lock on ``<data dir>/dev.lock`` for as long as this process lives (the
    returned file holds it). A second ``linkflow dev`` on the same data dir while the first runs
    would reuse its broker and then stop it on the way out, taking the first engine's broker with
    it; it is refused here instead, before anything starts. The kernel drops the lock when its
    holder ends in any way, so a ``linkflow dev`` after a kill -9 takes it at once (the file is
    opened non-inheritable: the broker it starts does not hold it)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / "dev.lock"
    held = path.open("a+")
    try:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        held.seek(0)
        holder = held.read().strip() or "?"
        held.close()
        raise click.ClickException(
            f"another `linkflow dev` (pid {holder}) is running with the data dir {data_dir}: "
            "stop it first (Ctrl-C), or start this one with another --data-dir and --kafka-port"
        ) from None
    held.seek(0)
    held.truncate()
    held.write(str(os.getpid()))
    held.flush()
    return held


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _say(line: str) -> None:
    """Echo while stopping: after a SIGHUP the terminal may be gone, and the stop must go on."""
    with contextlib.suppress(OSError):
        click.echo(line)


@main.group()
def replay() -> None:
    """Rebuild views from the event log, from offset 0."""


@replay.command("status")
@click.option(
    "--into",
    type=click.Path(path_type=Path),
    default=None,
    help="a new SQLite file to rebuild into and keep (refused if it exists; default: a temporary "
    "file, deleted after)",
)
def replay_status(into: Path | None) -> None:
    """Rebuild the read model (status, logs, costs) from offset 0 into a fresh store and compare
    it with the live one (LINKFLOW_VIEWS_URL, or the SQLite file under LINKFLOW_DATA_DIR)."""
    from linkflow_stream.replay import replay_and_compare  # imported here: keeps --help fast

    settings = Settings()
    if into is not None and into.exists():  # the rebuild resets its store: never one in use
        raise click.UsageError(
            f"--into {into} exists; the replay empties the store it rebuilds into, so it takes a "
            "path where nothing is yet (the live read model, or an earlier replay, would be wiped)"
        )
    with tempfile.TemporaryDirectory(prefix="linkflow-replay-") as scratch:
        target = into or Path(scratch) / "replayed.sqlite3"
        try:
            read, result = asyncio.run(
                replay_and_compare(settings, target, progress=lambda n: click.echo(f"  ... {n} records"))
            )
        except LinkflowError as exc:
            raise click.ClickException(exc.message) from exc
    click.echo(
        f"replayed {read} records; compared {result.compared} executions with the live read model: "
        f"{result.equal} equal, {len(result.different)} different, {len(result.different_lines)} with "
        f"different log lines, {len(result.missing_live)} missing ({result.moved_on} moved on since, "
        f"{result.expired} past retention, not compared)"
    )
    for execution_id in (result.different + result.different_lines + result.missing_live)[:10]:
        click.echo(f"  mismatch: {execution_id}")
    if not result.ok:
        raise SystemExit(1)


@replay.command("execution")
@click.argument("execution_id")
def replay_execution(execution_id: str) -> None:
    """Print one execution's events, in log order, duplicates included."""
    from linkflow_stream.replay import history  # imported here: keeps --help fast

    events = asyncio.run(history(Settings(), execution_id))
    if not events:
        raise click.ClickException(f"no events for {execution_id}")
    for e in events:
        detail = {
            k: v
            for k, v in e.model_dump(mode="json", exclude_none=True).items()
            if k not in ("execution_id", "seq", "type", "at", "workflow")
        }
        click.echo(f"{e.seq:>4}  {e.at.isoformat()}  {e.type.value:<22} {json.dumps(detail)}")


@main.group()
def events() -> None:
    """Read the event log (linkflow.events), decoded."""


@events.command("tail")
@click.option("--execution", "execution_id", default=None, help="only this execution's events")
@click.option(
    "--type",
    "types",
    multiple=True,
    type=click.Choice([t.value for t in EventType]),
    help="only events of this type (repeat for several); node_started also matches an inline "
    "node's attempt, written as the one event that ends it (ADR 0056)",
)
@click.option("--follow", "-f", is_flag=True, help="keep printing new events until interrupted")
def events_tail(execution_id: str | None, types: tuple[str, ...], follow: bool) -> None:
    """Print events as JSON lines, oldest first: every partition (or the one --execution lives
    on) from its start to its end, and on with --follow. Records that do not decode are
    reported on stderr and skipped."""
    from linkflow_stream.core.inline_attempts import matches_type
    from linkflow_stream.kafka.codecs import codec_for
    from linkflow_stream.kafka.execution_log import tail  # imported here: keeps --help fast

    settings = Settings()
    codec = codec_for(settings)

    async def show() -> None:
        topic = settings.topic(topic_names.EVENTS)
        async for record in tail(settings.bootstrap_servers, topic, execution_id=execution_id, follow=follow):
            try:
                await codec.learn([record.value])  # with a registry: ids this process has not met
                event = codec.decode(record.value, ExecutionEvent)
            except LinkflowError as exc:
                click.echo(f"{record.topic}[{record.partition}]@{record.offset}: {exc.message}", err=True)
                continue
            if not types or any(matches_type(event, t) for t in types):
                click.echo(event.model_dump_json(exclude_none=True))
                sys.stdout.flush()  # a pipe reader (another program, a test) sees each line at once

    # A job started with `&` by a script inherits SIGINT ignored; a SIGINT must still stop --follow.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        asyncio.run(show())
    except KeyboardInterrupt:
        pass
    except LinkflowError as exc:
        raise click.ClickException(exc.message) from exc


@main.group()
def keys() -> None:
    """API keys (LINKFLOW_AUTH=required): each belongs to one team and has one role."""


@keys.command("create")
@click.option("--team", required=True, help="the team the key acts for (letters, digits, _ . -)")
@click.option(
    "--role",
    type=click.Choice([r.value for r in Role]),
    required=True,
    help="viewer: read; operator: also start, cancel, retry, register workflows; admin: also "
    "manage keys and workers, see every team",
)
@click.option("--name", default="", help="a label to recognise the key by in `keys list`")
def keys_create(team: str, role: str, name: str) -> None:
    """Create a key and print it once: only its hash is stored."""
    from linkflow_stream.keys import create_key  # imported here: keeps --help fast

    if not re.fullmatch(TEAM, team):
        raise click.BadParameter("1 to 64 letters, digits, '_', '.' or '-'", param_hint="--team")
    key, record = asyncio.run(create_key(Settings(), team, Role(role), name))
    click.echo(f"created key {record.id} (team {record.team}, role {record.role.value})")
    click.echo("the key (shown only now; send it as `Authorization: Bearer <key>`):")
    click.echo(key)


@keys.command("list")
def keys_list() -> None:
    """Every key: id, team, role, name, created, revoked (never the key itself)."""
    from linkflow_stream.keys import load_keys  # imported here: keeps --help fast

    found = asyncio.run(load_keys(Settings())).listed()
    if not found:
        click.echo("no keys")
    for k in found:
        state = f"revoked {k.revoked_at.isoformat()}" if k.revoked_at else "active"
        click.echo(f"{k.id}  {k.team:<16} {k.role.value:<8} {state:<10} {k.created_at.isoformat()}  {k.name}")


@keys.command("revoke")
@click.argument("key_id")
def keys_revoke(key_id: str) -> None:
    """Revoke a key by its id (as `keys list` shows it); every instance refuses it from then on."""
    from linkflow_stream.keys import revoke_key  # imported here: keeps --help fast

    try:
        record = asyncio.run(revoke_key(Settings(), key_id))
    except LinkflowError as exc:
        raise click.ClickException(exc.message) from exc
    click.echo(f"revoked key {record.id} (team {record.team}, role {record.role.value})")


EXIT_CODES = """\b
Exit codes:
  0  done (with --wait: the run succeeded)
  1  with --wait: the run ended failed or cancelled
  2  bad usage, or a request the engine refused (400, 401, 403, 409)
  3  not found (404): no such workflow or execution (or another team's)
  4  no answer from the engine, it is unavailable (503, 5xx), or too busy for the team (429)
  5  with --wait: the run had not ended when the wait was over"""
EXIT_RUN_FAILED, EXIT_REFUSED, EXIT_NOT_FOUND, EXIT_UNAVAILABLE, EXIT_STILL_RUNNING = 1, 2, 3, 4, 5


def _engine_options(command: Callable[..., None]) -> Callable[..., None]:
    """--url and --key, on every command that calls the engine's API."""
    command = click.option(
        "--key",
        envvar="LINKFLOW_API_KEY",
        default=None,
        help="API key, sent as `Authorization: Bearer` (env LINKFLOW_API_KEY); not needed on "
        "loopback without keys",
    )(command)
    return click.option(
        "--url",
        envvar="LINKFLOW_URL",
        default="http://127.0.0.1:8084",
        show_default=True,
        help="the execution API (env LINKFLOW_URL)",
    )(command)


@contextlib.contextmanager
def _api_errors() -> Iterator[None]:
    """Client errors as a line on stderr and the exit code scripts read (see EXIT_CODES)."""
    from linkflow_stream.client import (
        ClientError,
        ConnectionFailed,
        NotFound,
        ServerError,
        TooManyRequests,
        Unavailable,
        WaitTimedOut,
    )

    try:
        yield
    except WaitTimedOut as exc:
        _exit(EXIT_STILL_RUNNING, exc)
    except NotFound as exc:
        _exit(EXIT_NOT_FOUND, exc)
    except (ConnectionFailed, Unavailable, ServerError, TooManyRequests) as exc:
        _exit(EXIT_UNAVAILABLE, exc)
    except ClientError as exc:
        _exit(EXIT_REFUSED, exc)


def _exit(code: int, exc: Exception) -> None:
    click.echo(f"error: {exc}", err=True)
    raise SystemExit(code)


def _print(value: object) -> None:
    click.echo(json.dumps(value, indent=2))


def _client(url: str, key: str | None) -> Client:
    from linkflow_stream.client import Client  # imported here: keeps --help fast

    return Client(url, key or None)


def _json_option(text: str, what: str) -> object:
    """JSON given inline, or ``@path`` for a file's (``@-``: standard input)."""
    if text.startswith("@"):
        name = text[1:]
        try:
            text = click.get_text_stream("stdin").read() if name == "-" else Path(name).read_text()
        except OSError as exc:
            raise click.BadParameter(f"cannot read {name}: {exc.strerror}", param_hint=what) from exc
    try:
        return json.loads(text)
    except ValueError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint=what) from exc


def _ended(execution: Mapping[str, Any]) -> None:
    """Exit as a waited-for run ended: 0 success, 1 failed or cancelled, 5 not ended yet."""
    status = execution["status"]
    if status in ("failed", "cancelled"):
        raise SystemExit(EXIT_RUN_FAILED)
    if status != "success":
        raise SystemExit(EXIT_STILL_RUNNING)


@main.group(epilog=EXIT_CODES)
def workflows() -> None:
    """Workflow definitions on a running engine (its API, --url)."""


@workflows.command("apply", epilog=EXIT_CODES)
@click.argument("file", type=click.File("r"))
@_engine_options
def workflows_apply(file: TextIO, url: str, key: str | None) -> None:
    """Register the workflow in FILE (JSON; `-` reads standard input): a new version if its id
    exists and the definition changed. Prints {"id", "version"} (with "unchanged": true when
    the latest version was the same)."""
    try:
        definition = json.load(file)
    except ValueError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="FILE") from exc
    if not isinstance(definition, dict):
        raise click.BadParameter("the workflow must be a JSON object", param_hint="FILE")
    with _api_errors():
        _print(_client(url, key).register_workflow(definition))


@workflows.command("get", epilog=EXIT_CODES)
@click.argument("workflow_id")
@_engine_options
def workflows_get(workflow_id: str, url: str, key: str | None) -> None:
    """Print the latest version of a workflow."""
    with _api_errors():
        _print(_client(url, key).get_workflow(workflow_id))


@workflows.command("list", epilog=EXIT_CODES)
@_engine_options
def workflows_list(url: str, key: str | None) -> None:
    """Print every workflow's latest version (id, version, name, team)."""
    with _api_errors():
        _print(_client(url, key).list_workflows())


@main.group(epilog=EXIT_CODES)
def executions() -> None:
    """Runs on a running engine (its API, --url): start, get, list, cancel, logs."""


@executions.command("start", epilog=EXIT_CODES)
@click.argument("workflow_id")
@click.option(
    "--input", "input_text", default="{}", show_default=True, help="the run's input: JSON, or @FILE"
)
@click.option(
    "--wait",
    type=click.FloatRange(0, 300),
    default=None,
    help="seconds to wait for the run to end; then prints the whole run and exits 0, 1 or 5",
)
@click.option("--priority", type=click.Choice(["high", "normal", "low"]), default=None, help="default normal")
@click.option(
    "--idempotency-key", default=None, help="starts with the same key within 24 hours start one run"
)
@click.option(
    "--via",
    type=click.Choice(["http", "kafka"]),
    default="http",
    show_default=True,
    help="kafka: produce a StartRequest to linkflow.start (LINKFLOW_BOOTSTRAP_SERVERS, "
    "LINKFLOW_TOPIC_PREFIX) instead of calling the API; --wait then polls the API",
)
@click.option("--execution-id", default=None, help="with --via kafka: the run's id, your choice")
@_engine_options
def executions_start(
    workflow_id: str,
    input_text: str,
    wait: float | None,
    priority: str | None,
    idempotency_key: str | None,
    via: str,
    execution_id: str | None,
    url: str,
    key: str | None,
) -> None:
    """Start a run of WORKFLOW_ID. Prints {"id", "status"}, or with --wait the run once it ended."""
    input_data = _json_option(input_text, "--input")
    if via == "kafka":
        _start_via_kafka(workflow_id, input_data, wait, priority, idempotency_key, execution_id, url, key)
        return
    if execution_id is not None:
        raise click.UsageError("--execution-id needs --via kafka (the API picks the id)")
    with _api_errors():
        started = _client(url, key).start_execution(
            workflow_id,
            input_data,
            wait=wait,
            priority=cast(Any, priority),
            idempotency_key=idempotency_key,
        )
    if started.execution is not None:
        _print(started.execution)
    else:
        _print({"id": started.id, "status": started.status})
    if wait is not None:
        _ended({"status": started.status})


def _start_via_kafka(
    workflow_id: str,
    input_data: Any,
    wait: float | None,
    priority: str | None,
    idempotency_key: str | None,
    execution_id: str | None,
    url: str,
    key: str | None,
) -> None:
    """``executions start --via kafka``: produce, print the id, and with --wait follow it over HTTP."""
    from linkflow_stream.client import WaitTimedOut, start_via_kafka
    from linkflow_stream.core.idempotency import same_start

    if idempotency_key is not None and wait is not None:
        raise click.UsageError(
            "--wait with --via kafka needs --execution-id: the run of an idempotency key gets its id "
            "from the engine (the workflow's team and the time), so this command cannot follow it"
        )
    settings = Settings()
    try:
        run_id = asyncio.run(
            start_via_kafka(
                settings.bootstrap_servers,
                workflow_id,
                input_data,
                priority=priority or "normal",
                idempotency_key=idempotency_key,
                execution_id=execution_id,
                topic_prefix=settings.topic_prefix,
            )
        )
    except LinkflowError as exc:
        raise click.UsageError(exc.message) from exc
    except Exception as exc:
        click.echo(f"error: the start request was not acknowledged by Kafka: {exc!r}", err=True)
        raise SystemExit(EXIT_UNAVAILABLE) from exc
    if run_id is None:  # a keyed start: the API names its run
        _print({"sent": True, "idempotency_key": idempotency_key, "status": "requested"})
        return
    if wait is None:
        _print({"id": run_id, "status": "requested"})
        return
    with _api_errors():
        client = _client(url, key)
        try:  # the intake makes the run a moment later: not found is "not yet" until the wait is over
            execution = client.wait_for(run_id, wait, poll=0.2, not_found_is_pending=True)
        except WaitTimedOut:
            execution = client.get_execution(run_id)
    if not same_start(execution, workflow_id, {} if input_data is None else input_data):  # as sent
        click.echo(
            f"error: execution {run_id} is another start (another workflow or input): this one was "
            "not started, and is in the dead-letter topic (conflict)",
            err=True,
        )
        raise SystemExit(EXIT_REFUSED)
    _print(execution)
    _ended(execution)


@executions.command("get", epilog=EXIT_CODES)
@click.argument("execution_id")
@click.option(
    "--wait",
    type=click.FloatRange(0, None),
    default=None,
    help="seconds to wait for the run to end (polling); exits 0, 1 or 5 as it ended",
)
@_engine_options
def executions_get(execution_id: str, wait: float | None, url: str, key: str | None) -> None:
    """Print a run: status, nodes (output, error, attempts), history."""
    with _api_errors():
        client = _client(url, key)
        if wait is None:
            _print(client.get_execution(execution_id))
            return
        from linkflow_stream.client import WaitTimedOut

        try:
            execution = client.wait_for(execution_id, wait)
        except WaitTimedOut:
            execution = client.get_execution(execution_id)
    _print(execution)
    _ended(execution)


@executions.command("list", epilog=EXIT_CODES)
@click.option(
    "--status",
    type=click.Choice(["pending", "queued", "running", "success", "failed", "cancelled", "paused"]),
)
@click.option("--workflow-id", default=None)
@click.option("--team", default=None)
@click.option("--priority", type=click.Choice(["high", "normal", "low"]), default=None)
@click.option("--created-after", default=None, help="ISO-8601, e.g. 2026-12-01T09:30:00Z")
@click.option("--created-before", default=None, help="ISO-8601")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True, help="runs per page")
@click.option("--cursor", default=None, help="next_cursor of the page before")
@click.option("--all", "every", is_flag=True, help="follow next_cursor to the last page")
@_engine_options
def executions_list(
    status: str | None,
    workflow_id: str | None,
    team: str | None,
    priority: str | None,
    created_after: str | None,
    created_before: str | None,
    limit: int,
    cursor: str | None,
    every: bool,
    url: str,
    key: str | None,
) -> None:
    """Print runs, newest first, as {"executions", "count", "next_cursor"}."""
    filters: dict[str, Any] = {
        "status": status,
        "workflow_id": workflow_id,
        "team": team,
        "priority": priority,
        "created_after": created_after,
        "created_before": created_before,
    }
    with _api_errors():
        client = _client(url, key)
        if every:
            found = list(client.iter_executions(**filters, page_size=limit))
            _print({"executions": found, "count": len(found), "next_cursor": None})
        else:
            _print(client.list_executions(**filters, limit=limit, cursor=cursor))


@executions.command("cancel", epilog=EXIT_CODES)
@click.argument("execution_id")
@_engine_options
def executions_cancel(execution_id: str, url: str, key: str | None) -> None:
    """Cancel a run (exit 2 with a conflict once it has ended)."""
    with _api_errors():
        _print(_client(url, key).cancel_execution(execution_id))


@executions.command("pause", epilog=EXIT_CODES)
@click.argument("execution_id")
@click.option(
    "--deadline",
    type=click.Choice(["keep", "suspend"]),
    default="keep",
    show_default=True,
    help="keep: the run's deadline still applies while paused; suspend: it stops until resume.",
)
@_engine_options
def executions_pause(
    execution_id: str, deadline: Literal["keep", "suspend"], url: str, key: str | None
) -> None:
    """Pause a run: nothing new starts until it is resumed (exit 2 with a conflict once it has
    ended or if it is already paused)."""
    with _api_errors():
        _print(_client(url, key).pause_execution(execution_id, deadline))


@executions.command("resume", epilog=EXIT_CODES)
@click.argument("execution_id")
@_engine_options
def executions_resume(execution_id: str, url: str, key: str | None) -> None:
    """Resume a paused run (exit 2 with a conflict unless it is paused)."""
    with _api_errors():
        _print(_client(url, key).resume_execution(execution_id))


@executions.command("logs", epilog=EXIT_CODES)
@click.argument("execution_id")
@click.option("--level", type=click.Choice(["debug", "info", "warning", "error"]), default=None)
@click.option("--node-id", default=None)
@_engine_options
def executions_logs(
    execution_id: str, level: str | None, node_id: str | None, url: str, key: str | None
) -> None:
    """Print a run's log lines, oldest first: time, level, node, message."""
    with _api_errors():
        lines = _client(url, key).logs(execution_id, level=cast(Any, level), node_id=node_id)
    for line in lines:
        click.echo(f"{line['at']}  {line['level']:<7} {line['node_id'] or '-':<12} {line['message']}")


@main.group()
def topics() -> None:
    """Topic specs in topics/topics.toml."""


@topics.command("apply")
def topics_apply() -> None:
    """Create every missing topic and bring configs to the spec; safe to run again. With
    LINKFLOW_SCHEMA_REGISTRY_URL, also register every topic's value schema (subject <topic>-value).

    Every topic gets the replication factor and min.insync.replicas of the environment named by
    LINKFLOW_TOPICS_ENV (`dev` or `cluster` in topics/topics.toml), or, unset, of the one the
    cluster's broker count allows (one broker: dev; three or more: cluster)."""
    settings = Settings()
    try:
        replication = asyncio.run(topic_environment(settings))
        click.echo(
            f"environment {replication.environment}: replication factor {replication.replication_factor}, "
            f"min.insync.replicas {replication.min_insync_replicas}"
        )
        changes = asyncio.run(apply_topics(settings, load_specs(environment=replication.environment)))
    except TopicSpecError as exc:
        raise click.ClickException(exc.message) from exc
    for line in changes or ["all topics already exist"]:
        click.echo(line)
    if settings.schema_registry_url:
        _register_schemas(settings)


def _register_schemas(settings: Settings) -> None:
    """Register every topic's value schema with LINKFLOW_SCHEMA_REGISTRY_URL; say the ids."""
    from linkflow_stream.kafka.codecs import codec_for, register_schemas  # keeps --help fast
    from linkflow_stream.kafka.pools import TaskPools

    async def register() -> dict[str, int]:
        codec = codec_for(settings)
        try:
            return await register_schemas(codec, settings, await TaskPools(settings).names())
        finally:
            await codec.close()

    try:
        ids = asyncio.run(register())
    except LinkflowError as exc:
        raise click.ClickException(f"schema registry {settings.schema_registry_url}: {exc.message}") from exc
    click.echo(f"schema registry {settings.schema_registry_url}: {len(ids)} subjects registered")
    for subject, schema_id in ids.items():
        click.echo(f"  {subject}: id {schema_id}")


if __name__ == "__main__":
    main()
