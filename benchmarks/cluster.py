"""A real Redis Cluster on loopback ports, for the test suite and the benchmark:
made from the machine's ``redis-server`` and ``redis-cli``, stopped (nothing
saved) when the block ends. Three primaries; with ``replicas``, each primary
has that many replicas, and a primary killed is failed over to one of them
after ``node_timeout_ms``."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.retry import Retry

__all__ = ["ClusterUnavailable", "LocalCluster", "LocalRedis", "local_cluster", "running_cluster"]

PRIMARIES = 3
START_TIMEOUT_S = 30.0
# How long a node may not answer before the others fail it over (Redis's default
# is 15 s); short, so a test sees the failover within its time.
NODE_TIMEOUT_MS_DEFAULT = 15_000


class ClusterUnavailable(RuntimeError):
    """The cluster could not be made here (no redis-server, or it did not form)."""


@dataclass
class LocalCluster:
    """A running local cluster: its servers' ports, and a way to crash one."""

    host: str
    ports: list[int]

    def primary_of(self, key: str) -> int:
        """The port of the primary that holds ``key``'s slot now."""
        slot = redis.crc.key_slot(key.encode())
        for port in self.live_ports():
            with redis.Redis(host=self.host, port=port, decode_responses=True) as client:
                for start, end, primary, *_replicas in client.execute_command("CLUSTER SLOTS"):
                    if start <= slot <= end:
                        return int(primary[1])
        raise ClusterUnavailable(f"no node answers for slot {slot}")

    def live_ports(self) -> list[int]:
        return [port for port in self.ports if _answers(self.host, port)]

    def kill(self, port: int) -> None:
        """SIGKILL the server on ``port``: a crash, nothing flushed, no goodbye to the others."""
        with redis.Redis(host=self.host, port=port, decode_responses=True) as client:
            pid = int(client.info("server")["process_id"])
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + START_TIMEOUT_S
        while _answers(self.host, port):
            if time.monotonic() > deadline:
                raise ClusterUnavailable(f"the server on port {port} did not die")
            time.sleep(0.05)

    def wait_until_failed_over(self, key: str, dead_port: int) -> int:
        """The port of the replica promoted in place of ``dead_port`` for ``key``'s slot,
        once every live node agrees the cluster is whole again."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                primary = self.primary_of(key)
                whole = all(
                    _cluster_state_of(self.host, port) == "ok" for port in self.live_ports()
                )
            except (redis.RedisError, ClusterUnavailable):
                primary, whole = dead_port, False
            if primary != dead_port and whole:
                return primary
            if time.monotonic() > deadline:
                raise ClusterUnavailable(f"no replica took over from port {dead_port}")
            time.sleep(0.1)


@contextmanager
def local_cluster(root: Path) -> Iterator[tuple[str, int]]:
    """(host, port) of one node of a fresh cluster of three primaries under ``root``."""
    with running_cluster(root) as cluster:
        yield (cluster.host, cluster.ports[0])


@contextmanager
def running_cluster(
    root: Path, *, replicas: int = 0, node_timeout_ms: int = NODE_TIMEOUT_MS_DEFAULT
) -> Iterator[LocalCluster]:
    """A fresh cluster whose files live under ``root``, each primary with ``replicas``."""
    server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if server is None or cli is None:
        raise ClusterUnavailable("redis-server and redis-cli are needed")
    ports = _free_ports(PRIMARIES * (1 + replicas))
    try:
        for port in ports:
            home = root / str(port)
            home.mkdir(parents=True, exist_ok=True)
            args = _server_args(
                server,
                port,
                home,
                **{
                    "cluster-enabled": "yes",
                    "cluster-config-file": "nodes.conf",
                    "cluster-node-timeout": str(node_timeout_ms),
                    # A replica's first sync starts at once, not after the default 5 s.
                    "repl-diskless-sync-delay": "0",
                },
            )
            subprocess.run(args, check=True)  # noqa: S603  # our own arguments
        for port in ports:
            _wait_for_ping(port)
        nodes = [f"127.0.0.1:{p}" for p in ports]
        create = [
            cli, "--cluster", "create", *nodes,
            "--cluster-replicas", str(replicas), "--cluster-yes",
        ]  # fmt: skip
        subprocess.run(create, check=True, capture_output=True, timeout=60)  # noqa: S603
        deadline = time.monotonic() + START_TIMEOUT_S
        # Every node sees the whole cluster (replicas attached and in sync).
        while not all(_cluster_state_of("127.0.0.1", p) == "ok" for p in ports) or (
            replicas and not _replicas_in_sync("127.0.0.1", ports, PRIMARIES * replicas)
        ):
            if time.monotonic() > deadline:
                raise ClusterUnavailable("the cluster did not reach state ok")
            time.sleep(0.2)
        client = RedisCluster(host="127.0.0.1", port=ports[0])
        client.ping()
        client.close()
    except (subprocess.SubprocessError, redis.RedisError, OSError) as error:
        _stop(cli, ports)
        raise ClusterUnavailable(str(error)) from error
    except ClusterUnavailable:
        _stop(cli, ports)
        raise
    try:
        yield LocalCluster("127.0.0.1", ports)
    finally:
        _stop(cli, ports)


class LocalRedis:
    """One Redis server of its own on a loopback port, that can be stopped and started
    again (empty, nothing saved): a Redis restart as production would see it."""

    def __init__(self, root: Path) -> None:
        server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
        if server is None or cli is None:
            raise ClusterUnavailable("redis-server and redis-cli are needed")
        self._server, self._cli = server, cli
        self._root = root
        self._root.mkdir(parents=True, exist_ok=True)
        [self.port] = _free_ports(1)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = _server_args(self._server, self.port, self._root)
        try:
            subprocess.run(args, check=True)  # noqa: S603  # our own arguments
            _wait_for_ping(self.port)
        except (subprocess.SubprocessError, redis.RedisError, OSError) as error:
            raise ClusterUnavailable(str(error)) from error

    def stop(self) -> None:
        """Shut the server down (nothing saved) and wait until it no longer answers."""
        _stop(self._cli, [self.port])
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if not _answers("127.0.0.1", self.port):
                return
            time.sleep(0.05)
        raise ClusterUnavailable(f"the server on port {self.port} did not stop")


def _server_args(server: str, port: int, home: Path, **extra: str) -> list[str]:
    """A daemonized redis-server on a loopback port, keeping nothing on disk."""
    options = {
        "port": str(port),
        "bind": "127.0.0.1",
        **extra,
        "save": "",
        "appendonly": "no",
        "daemonize": "yes",
        "dir": str(home),
        "logfile": str(home / "log"),
    }
    return [server, *(part for k, v in options.items() for part in (f"--{k}", v))]


def _free_ports(count: int) -> list[int]:
    """Ports free with their cluster-bus port (+10000) too."""
    ports: list[int] = []
    for candidate in range(21000 + os.getpid() % 5000, 40000):
        if len(ports) == count:
            break
        try:
            for port in (candidate, candidate + 10000):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        ports.append(candidate)
    return ports


def _wait_for_ping(port: int) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            with redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=1) as client:
                client.ping()
            return
        except redis.RedisError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _stop(cli: str, ports: list[int]) -> None:
    for port in ports:
        shutdown = [cli, "-p", str(port), "shutdown", "nosave"]
        subprocess.run(shutdown, check=False, capture_output=True)  # noqa: S603


def _answers(host: str, port: int) -> bool:
    """Whether a server answers on ``port``, asked once (redis-py's own retries of a
    refused connection would take seconds to say no)."""
    try:
        with redis.Redis(
            host=host, port=port, socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0)
        ) as client:
            client.ping()
    except redis.RedisError:
        return False
    return True


def _cluster_state_of(host: str, port: int) -> str:
    with redis.Redis(host=host, port=port, decode_responses=True) as client:
        info: Any = client.execute_command("CLUSTER INFO")  # redis-py parses it into a dict
    return str(info.get("cluster_state", "")) if isinstance(info, dict) else ""


def _replicas_in_sync(host: str, ports: list[int], expected: int) -> bool:
    """Whether ``expected`` replicas in all are attached to their primaries and online."""
    online = 0
    for port in ports:
        with redis.Redis(host=host, port=port, decode_responses=True) as client:
            info = client.info("replication")
        if info.get("role") == "master":
            online += sum(
                1
                for name, value in info.items()
                if name.startswith("slave")
                and isinstance(value, dict)
                and value.get("state") == "online"
            )
    return online == expected
