"""A real Milvus standalone server for tests: the PyPI package ``milvus`` (2.3.x, extra ``milvus``).

The package ships the Milvus standalone binary (the same server Milvus runs distributed) and a
``milvus-server`` launcher. :class:`MilvusServer` starts it on free loopback ports with its own
data folder::

    ETCD_CONFIG_PATH=DATA/embedEtcd.yaml milvus-server --data DATA/server --proxy-port P
        --etcd-port E --root-coord-port ... (every component port) --extra-config COMPONENT.ip=127.0.0.1

- every port is picked free on 127.0.0.1; the embedded etcd's client and peer ports (2379/2380 by
  default, not settable through the launcher) come from ``embedEtcd.yaml``, so that several
  servers (several test sessions) run side by side; components advertise 127.0.0.1;
- the launcher unpacks the binaries into ``DATA/server/bin`` (246 MB) on the first start, then
  answers readiness; the fixture waits until a pymilvus client lists collections (about 20 s on
  2 cores);
- it runs in its own process group (launcher + server): :meth:`MilvusServer.stop` sends SIGTERM
  to that group (by the launcher's process id), then SIGKILL if it is still there after 10 s
  (Milvus's graceful stop takes longer; its WAL keeps acknowledged writes);
- :meth:`MilvusServer.start` after a stop restarts it on the same ports and data.

Which launcher: ``$HASHKD_MILVUS_SERVER`` (a path), else ``milvus-server`` beside the running
Python, else on ``PATH``. Without one the tests that need it skip with the reason, unless
``HASHKD_REQUIRE_MILVUS_SERVER=1`` (CI), where they fail instead.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

#: The launcher's per-component port flags (the proxy's is the gRPC API clients use).
PORT_FLAGS = (
    "proxy-port",
    "proxy-internal-port",
    "etcd-port",
    "root-coord-port",
    "query-coord-port",
    "query-node-port",
    "index-coord-port",
    "index-node-port",
    "data-coord-port",
    "data-node-port",
)
#: Components whose advertised address is pinned to loopback.
COMPONENTS = ("rootCoord", "proxy", "queryCoord", "queryNode", "indexNode", "dataCoord", "dataNode")
START_TIMEOUT_S = 180.0


def launcher() -> str | None:
    """Path of the ``milvus-server`` launcher, or ``None`` when the package is not installed."""
    explicit = os.environ.get("HASHKD_MILVUS_SERVER")
    if explicit:
        return explicit if Path(explicit).is_file() else None
    beside = Path(sys.executable).parent / "milvus-server"
    if beside.is_file():
        return str(beside)
    return shutil.which("milvus-server")


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports free on 127.0.0.1 right now."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def proxy_port_in_config(config: Path) -> int | None:
    """The ``proxy.port`` the launcher wrote into ``milvus.yaml`` (it moves a taken port up)."""
    if not config.is_file():
        return None
    section = None
    for line in config.read_text().splitlines():
        if line and not line.startswith((" ", "#")):
            section = line.split(":", 1)[0].strip()
        elif section == "proxy" and line.startswith("  port:"):
            return int(line.split(":", 1)[1].split("#", 1)[0])
    return None


class MilvusServer:
    """One Milvus standalone server on loopback (see the module docstring)."""

    def __init__(self, command: str, data_dir: Path) -> None:
        self.command = command
        self.data_dir = Path(data_dir)
        ports = free_ports(len(PORT_FLAGS) + 1)
        self.ports = dict(zip(PORT_FLAGS, ports[:-1], strict=True))
        self.etcd_peer_port = ports[-1]
        self.process: subprocess.Popen | None = None
        self.start_seconds: float | None = None

    @property
    def port(self) -> int:
        found = proxy_port_in_config(self.data_dir / "server" / "configs" / "milvus.yaml")
        return found if found is not None else self.ports["proxy-port"]

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def _etcd_config(self) -> Path:
        client, peer = self.ports["etcd-port"], self.etcd_peer_port
        path = self.data_dir / "embedEtcd.yaml"
        path.write_text(
            f"listen-client-urls: http://127.0.0.1:{client}\n"
            f"advertise-client-urls: http://127.0.0.1:{client}\n"
            f"listen-peer-urls: http://127.0.0.1:{peer}\n"
            f"initial-advertise-peer-urls: http://127.0.0.1:{peer}\n"
            f"initial-cluster: default=http://127.0.0.1:{peer}\n"
        )
        return path

    def argv(self) -> list[str]:
        args = [self.command, "--data", str(self.data_dir / "server")]
        for flag, port in self.ports.items():
            args += [f"--{flag}", str(port)]
        for component in COMPONENTS:
            args += ["--extra-config", f"{component}.ip=127.0.0.1"]
        return args

    def start(self, timeout: float = START_TIMEOUT_S) -> str:
        """Start the server and return its URI when it answers.

        The first start goes through the launcher (it unpacks the binaries and writes
        ``configs/milvus.yaml``); a restart runs the unpacked binary on the same config, so the
        URI and the data stay the same (the launcher would move a port still in TIME_WAIT).
        """
        if self.process is not None and self.process.poll() is None:
            return self.uri
        self.data_dir.mkdir(parents=True, exist_ok=True)
        server = self.data_dir / "server"
        env = {**os.environ, "ETCD_CONFIG_PATH": str(self._etcd_config())}
        binary = server / "bin" / "milvus"
        if binary.is_file() and (server / "configs" / "milvus.yaml").is_file():
            env.update(
                DEPLOY_MODE="STANDALONE",
                METRICS_PORT=str(free_ports(1)[0]),
                MILVUS_RUN_DIR=str(server / "run"),
                LD_LIBRARY_PATH=f"{binary.parent}:{os.environ.get('LD_LIBRARY_PATH', '')}",
            )
            argv, cwd = [str(binary), "run", "standalone"], server
        else:
            argv, cwd = self.argv(), self.data_dir
        log = open(self.data_dir / "launcher.log", "ab")  # noqa: SIM115 - the child keeps it
        t0 = time.monotonic()
        self.process = subprocess.Popen(
            argv,
            cwd=cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,  # its own process group: stop() ends launcher and server
        )
        log.close()
        self.wait_ready(timeout)
        self.start_seconds = time.monotonic() - t0
        return self.uri

    def wait_ready(self, timeout: float) -> None:
        from pymilvus import MilvusClient

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                raise RuntimeError(f"the Milvus server exited during start-up: {self.log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    pass
                client = MilvusClient(self.uri, timeout=5)
                client.list_collections()
                client.close()
                return
            except Exception:  # noqa: BLE001 - not up yet
                time.sleep(1.0)
        self.stop()
        raise RuntimeError(f"the Milvus server was not ready in {timeout:.0f} s: {self.log_tail()}")

    def log_tail(self, lines: int = 15) -> str:
        path = self.data_dir / "server" / "logs" / "milvus-stderr.log"
        if not path.is_file():
            path = self.data_dir / "launcher.log"
        text = path.read_text(errors="replace") if path.is_file() else ""
        return " | ".join(text.strip().splitlines()[-lines:]) or "(no log)"

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM to the server's process group (by the launcher's pid), SIGKILL if it stays."""
        if self.process is None:
            return
        pgid = self.process.pid  # start_new_session: the launcher leads its own group
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and _group_alive(pgid):
                time.sleep(0.2)
            if not _group_alive(pgid):
                break
        self.process.wait(timeout=5)
        self.process = None


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def start_or_skip(data_dir: Path) -> MilvusServer:
    """A started :class:`MilvusServer`, or ``pytest.skip`` with the reason (see module docstring)."""
    pytest.importorskip("pymilvus")
    command = launcher()
    if command is None:
        reason = (
            "no Milvus server: the 'milvus' package (milvus-server) is not installed "
            "(pip install 'hashkd[milvus]', or set HASHKD_MILVUS_SERVER)"
        )
        if os.environ.get("HASHKD_REQUIRE_MILVUS_SERVER") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    server = MilvusServer(command, data_dir)
    server.start()
    return server


@pytest.fixture(scope="session")
def milvus_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MilvusServer]:
    """A Milvus server for the whole session (``.uri``, ``.pid``, ``.stop()``, ``.start()``)."""
    server = start_or_skip(tmp_path_factory.mktemp("milvus-server"))
    try:
        yield server
    finally:
        server.stop(timeout=3.0)  # a throw-away data folder: no need for a graceful stop
