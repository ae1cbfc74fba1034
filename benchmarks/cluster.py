"""A real Redis Cluster of three primaries on loopback ports, for the test
suite and the benchmark: made from the machine's ``redis-server`` and
``redis-cli``, stopped (nothing saved) when the block ends."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis
from redis.cluster import RedisCluster

__all__ = ["ClusterUnavailable", "LocalRedis", "local_cluster"]

PRIMARIES = 3
START_TIMEOUT_S = 30.0


class ClusterUnavailable(RuntimeError):
    """The cluster could not be made here (no redis-server, or it did not form)."""


@contextmanager
def local_cluster(root: Path) -> Iterator[tuple[str, int]]:
    """(host, port) of one node of a fresh cluster whose files live under ``root``."""
    server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if server is None or cli is None:
        raise ClusterUnavailable("redis-server and redis-cli are needed")
    ports = _free_ports(PRIMARIES)
    try:
        for port in ports:
            home = root / str(port)
            home.mkdir(parents=True, exist_ok=True)
            args = _server_args(
                server,
                port,
                home,
                **{"cluster-enabled": "yes", "cluster-config-file": "nodes.conf"},
            )
            subprocess.run(args, check=True)  # noqa: S603  # our own arguments
        for port in ports:
            _wait_for_ping(port)
        nodes = [f"127.0.0.1:{p}" for p in ports]
        create = [cli, "--cluster", "create", *nodes, "--cluster-replicas", "0", "--cluster-yes"]
        subprocess.run(create, check=True, capture_output=True, timeout=60)  # noqa: S603
        deadline = time.monotonic() + START_TIMEOUT_S
        with redis.Redis(host="127.0.0.1", port=ports[0], decode_responses=True) as probe:
            while _cluster_state(probe) != "ok":
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
        yield ("127.0.0.1", ports[0])
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
            try:
                with redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=1) as c:
                    c.ping()
            except redis.RedisError:
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


def _cluster_state(client: Any) -> str:
    info = client.execute_command("CLUSTER INFO")  # redis-py parses it into a dict
    return str(info.get("cluster_state", "")) if isinstance(info, dict) else ""
