"""The ``linkflow`` command: run the engine, manage the dev broker and the topics."""

from __future__ import annotations

import asyncio
from pathlib import Path

import click

from linkflow_stream.broker import Broker, BrokerError
from linkflow_stream.settings import Settings
from linkflow_stream.topics import TopicSpecError, apply_topics


@click.group()
def main() -> None:
    """LinkFlow Stream: workflow execution on Apache Kafka."""


@main.command()
@click.option("--loglevel", default="info", show_default=True)
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
