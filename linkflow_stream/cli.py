"""The ``linkflow`` command: run the engine, manage the dev broker and the topics."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import tempfile
import time
from pathlib import Path
from types import FrameType

import click

from linkflow_stream.core.auth import TEAM, Role
from linkflow_stream.core.errors import LinkflowError
from linkflow_stream.dev.broker import Broker, BrokerError, StartOutcome
from linkflow_stream.dev.cluster import Cluster
from linkflow_stream.kafka.topics import TopicSpecError, apply_topics, load_specs, topic_environment
from linkflow_stream.settings import Settings


@click.group()
def main() -> None:
    """LinkFlow Stream: workflow execution on Apache Kafka."""


@main.command()
@click.option(
    "--loglevel",
    default="info",
    show_default=True,
    envvar="LINKFLOW_LOG_LEVEL",
    help="level of the engine's own logs (env LINKFLOW_LOG_LEVEL); aiokafka and aiohttp log at warning",
)
def run(loglevel: str) -> None:
    """Run the engine (API, orchestrator, executor, views) in the foreground."""
    from linkflow_stream.engine import run as run_engine

    run_engine(Settings(), loglevel=loglevel)


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


@main.command()
@DATA_DIR
@click.option("--kafka-port", default=9092, show_default=True, help="the broker's client port on 127.0.0.1")
@click.option(
    "--loglevel",
    default="info",
    show_default=True,
    envvar="LINKFLOW_LOG_LEVEL",
    help="level of the engine's own logs (env LINKFLOW_LOG_LEVEL)",
)
def dev(data_dir: Path, kafka_port: int, loglevel: str) -> None:
    """Start (or reuse) the dev broker, apply the topics, run the engine; stop both on Ctrl-C.

    What ``make run`` runs. The engine uses this broker whatever LINKFLOW_BOOTSTRAP_SERVERS says.
    The broker is stopped on SIGINT, SIGTERM or SIGHUP at any point, also when it was reused from
    an earlier run; after a kill -9 it keeps running, and the next ``linkflow dev`` reuses it."""
    from linkflow_stream.engine import run as run_engine  # imported here: keeps --help fast

    broker = _broker(data_dir, kafka_port)
    owned = False  # a broker refused for reuse (another port) is not ours to stop
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
    help="the fresh store to rebuild into (default: a temporary SQLite file, deleted after)",
)
def replay_status(into: Path | None) -> None:
    """Rebuild the read model (status, logs, costs) from offset 0 into a fresh store and compare
    it with the live one (LINKFLOW_VIEWS_URL, or the SQLite file under LINKFLOW_DATA_DIR)."""
    from linkflow_stream.replay import replay_and_compare  # imported here: keeps --help fast

    settings = Settings()
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

    if not re.match(TEAM, team):
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


@main.group()
def topics() -> None:
    """Topic specs in topics/topics.toml."""


@topics.command("apply")
def topics_apply() -> None:
    """Create every missing topic and bring configs to the spec; safe to run again.

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


if __name__ == "__main__":
    main()
