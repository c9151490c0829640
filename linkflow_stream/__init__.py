"""LinkFlow Stream: an event-sourced workflow engine on Kafka.

gRPC's fork support is turned off here, before anything can import ``grpc`` (it reads the setting
once, at import). With it on, grpcio 1.80 to at least 1.85 restart their poller thread in the child
of every ``fork()``; ``subprocess`` then closes the child's descriptors before ``exec``, the thread
finds its epoll descriptor gone and aborts the child (SIGABRT, grpc/grpc#43055). This process forks
only to exec: the code sandbox's ``bwrap``, the dev broker, test engines. So with the OTLP gRPC
exporter (engine) or the test collector's gRPC server loaded, about one start in sixty died. An
operator's explicit ``GRPC_ENABLE_FORK_SUPPORT`` is left as set (ADR 0068).
"""

import os

os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
