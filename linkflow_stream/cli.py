"""The ``linkflow`` command: run the engine, manage the dev broker and the topics."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import click

from linkflow_stream.dev.broker import Broker, BrokerError
from linkflow_stream.kafka.topics import TopicSpecError, apply_topics
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
    help="level of the engine's own logs (env LINKFLOW_LOG_LEVEL); Faust logs at info",
)
def run(loglevel: str) -> None:
    """Run the engine (API, orchestrator, executor, views) in the foreground."""
    from linkflow_stream.engine import run as run_engine

    run_engine(Settings(), loglevel=loglevel)


@main.group()
def kafka() -> None:
    """A real single-node Kafka (KRaft) broker from Maven Central, for development and tests."""


def _broker(data_dir: Path, port: int) -> Broker:
    return Broker(data_dir=data_dir.resolve(), port=port)


@kafka.command("start")
@click.option(
    "--data-dir", type=click.Path(path_type=Path), default=Path(".linkflow/kafka"), show_default=True
)
@click.option("--port", default=9092, show_default=True)
def kafka_start(data_dir: Path, port: int) -> None:
    """Fetch the broker jars with Maven (first time), format storage, start, wait until ready."""
    broker = _broker(data_dir, port)
    if broker.pid_file.exists():
        broker.stop()
    click.echo(f"starting Kafka on 127.0.0.1:{port} (data in {broker.data_dir}) ...")
    try:
        broker.start(cache_dir=Path(".linkflow").resolve())
    except BrokerError as exc:
        raise click.ClickException(exc.message) from exc
    click.echo(f"Kafka ready at {broker.bootstrap} (pid {broker.pid_file.read_text()})")


@kafka.command("stop")
@click.option(
    "--data-dir", type=click.Path(path_type=Path), default=Path(".linkflow/kafka"), show_default=True
)
def kafka_stop(data_dir: Path) -> None:
    """Stop the broker started by ``linkflow kafka start``."""
    _broker(data_dir, 0).stop()
    click.echo("Kafka stopped")


@main.group()
def replay() -> None:
    """Rebuild views from the event log, from offset 0."""


@replay.command("status")
@click.option(
    "--url", default="http://127.0.0.1:8084", show_default=True, help="a live engine to compare with"
)
@click.option("--no-compare", is_flag=True, help="only rebuild and summarise")
def replay_status(url: str, no_compare: bool) -> None:
    """Fold linkflow.events into a fresh status view and compare it with a live engine's view."""
    from linkflow_stream.replay import compare_with_live, rebuild_status  # imported here: keeps --help fast

    settings = Settings()
    view = asyncio.run(rebuild_status(settings, progress=lambda n: click.echo(f"  ... {n} events")))
    by_status: dict[str, int] = {}
    for state in view.executions.values():
        by_status[state.status.value] = by_status.get(state.status.value, 0) + 1
    click.echo(
        f"replayed {view.applied + view.duplicates} events ({view.duplicates} duplicates dropped) "
        f"into {len(view.executions)} executions: {by_status}"
    )
    if no_compare:
        return
    result = asyncio.run(compare_with_live(view, url))
    click.echo(
        f"compared {result.equal + len(result.different) + len(result.missing_live)} finished executions "
        f"with {url}: {result.equal} equal, {len(result.different)} different, "
        f"{len(result.missing_live)} missing ({result.still_running} still running, not compared)"
    )
    for execution_id in (result.different + result.missing_live)[:10]:
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
def topics() -> None:
    """Topic specs in topics/topics.toml."""


@topics.command("apply")
def topics_apply() -> None:
    """Create every missing topic; safe to run again."""
    settings = Settings()
    try:
        changes = asyncio.run(apply_topics(settings))
    except TopicSpecError as exc:
        raise click.ClickException(exc.message) from exc
    for line in changes or ["all topics already exist"]:
        click.echo(line)


if __name__ == "__main__":
    main()
