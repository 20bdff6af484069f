"""pytest fixtures for the fluxo client-compatibility suite.

The suite drives the real `fluxo` binary (``$FLUXO_BIN``, default
``target/debug/fluxo``) over TCP on the loopback interface with third-party
Kafka clients (confluent-kafka/librdkafka, kafka-python, kcat).

Fixtures:
  broker          a running broker with default options
  broker_factory  start extra brokers with extra ``serve`` flags
  new_topic       ``new_topic(prefix="t")`` -> unique, valid topic name
"""

from __future__ import annotations

import atexit
import ctypes
import os
import queue
import re
import signal
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest

from fluxo_helpers import fluxo_bin

# Every listener prints one line `fluxo: KIND listening on HOST:PORT`; the
# broker is ready once all of LISTENERS have printed theirs.
LISTENER_RE = re.compile(r"^fluxo: (\w+) listening on (\S+):(\d+)\s*$")
LISTENERS = {"kafka", "http", "postgres", "mqtt", "registry"}
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0

_ALL_BROKERS: list["Broker"] = []

try:
    _LIBC = ctypes.CDLL(None, use_errno=True)
except OSError:  # pragma: no cover - not Linux
    _LIBC = None
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: if pytest dies (even by
    # SIGKILL) the broker gets SIGKILL instead of lingering on.
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class BrokerStartError(RuntimeError):
    pass


class Broker:
    """One `fluxo serve` process (and its restarts) on one data dir.

    Attributes: bootstrap ("127.0.0.1:PORT"), host, port, data_dir, proc, log_path.
    """

    # The listeners whose lines say the process is ready.
    expected_listeners = LISTENERS

    def __init__(self, workdir: Path, extra_args: list[str] | None = None, name: str = "broker"):
        self.bin = fluxo_bin()
        self.name = name
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.data_dir = self.workdir / "data"
        self.data_dir.mkdir(exist_ok=True)
        self.log_path = self.workdir / "fluxo.log"
        self.extra_args = list(extra_args or [])
        self.proc: subprocess.Popen | None = None
        self.http_addr: str | None = None
        self.pg_host: str | None = None
        self.pg_port: int | None = None
        # kind -> (host, port) of every listener the last start printed.
        self.listeners: dict[str, tuple[str, int]] = {}
        self.host: str | None = None
        self.port: int | None = None
        self.starts = 0
        self._log_lock = threading.Lock()
        self._log = open(self.log_path, "a", buffering=1, encoding="utf-8", errors="replace")
        self._threads: list[threading.Thread] = []
        _ALL_BROKERS.append(self)

    # -- properties -----------------------------------------------------
    @property
    def bootstrap(self) -> str:
        assert self.port is not None, "broker never started"
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def is_alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # -- logging --------------------------------------------------------
    def _write_log(self, line: str) -> None:
        with self._log_lock:
            if not self._log.closed:
                self._log.write(line if line.endswith("\n") else line + "\n")

    def note(self, msg: str) -> None:
        """Write a harness note into the broker log (helps reading failures)."""
        self._write_log(f"[harness {time.strftime('%H:%M:%S')}] {msg}")

    def _pump(self, stream, tag: str, lines: "queue.Queue[str] | None") -> None:
        try:
            for raw in iter(stream.readline, b""):
                line = raw.decode("utf-8", errors="replace").rstrip("\n")
                self._write_log(f"[{tag}] {line}")
                if lines is not None:
                    lines.put(line)
        except (OSError, ValueError):
            pass
        finally:
            if lines is not None:
                lines.put(None)  # EOF marker
            try:
                stream.close()
            except OSError:
                pass

    def log_tail(self, n: int = 80) -> str:
        with self._log_lock:
            if not self._log.closed:
                self._log.flush()
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "<no log>"
        return "\n".join(text.splitlines()[-n:])

    # -- lifecycle ------------------------------------------------------
    def command(self, port: int) -> list[str]:
        return [
            self.bin, "serve",
            "--data-dir", str(self.data_dir),
            "--kafka-addr", f"127.0.0.1:{port}",
            "--http-addr", "127.0.0.1:0",
            "--pg-addr", "127.0.0.1:0",
            "--registry-addr", "127.0.0.1:0",
            "--mqtt-addr", "127.0.0.1:0",
            *self.extra_args,
        ]

    def start(self, port: int | None = None) -> "Broker":
        """Start the broker. On a restart it reuses the previous Kafka port."""
        if self.is_alive():
            raise BrokerStartError("broker already running")
        if port is None:
            port = self.port if self.port is not None else 0
        cmd = self.command(port)
        self.listeners = {}
        self.starts += 1
        self.note(f"start #{self.starts}: {' '.join(cmd)}")
        env = dict(os.environ)
        env.setdefault("RUST_BACKTRACE", "1")
        env.setdefault("NO_COLOR", "1")  # plain log file
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=str(self.workdir),
            env=env,
            preexec_fn=_die_with_parent,
        )
        lines: "queue.Queue[str | None]" = queue.Queue()
        t_out = threading.Thread(target=self._pump, args=(self.proc.stdout, "out", lines), daemon=True)
        t_err = threading.Thread(target=self._pump, args=(self.proc.stderr, "err", None), daemon=True)
        t_out.start()
        t_err.start()
        self._threads = [t_out, t_err]

        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._force_kill()
                raise BrokerStartError(
                    f"not every listener printed its line within {START_TIMEOUT_S}s\n"
                    f"--- log tail ---\n{self.log_tail()}")
            try:
                line = lines.get(timeout=min(remaining, 0.5))
            except queue.Empty:
                if self.proc.poll() is not None and not t_out.is_alive():
                    raise BrokerStartError(
                        f"fluxo exited with {self.proc.returncode} before listening\n"
                        f"--- log tail ---\n{self.log_tail()}")
                continue
            if line is None:
                rc = self.proc.wait(timeout=5)
                raise BrokerStartError(
                    f"fluxo closed stdout (exit code {rc}) before listening\n"
                    f"--- log tail ---\n{self.log_tail()}")
            m = LISTENER_RE.match(line)
            if not m:
                continue
            kind, host, new_port = m.group(1), m.group(2), int(m.group(3))
            if kind == "kafka":
                if port != 0 and new_port != port:
                    self._force_kill()
                    raise BrokerStartError(f"asked for port {port}, broker listens on {new_port}")
                self.host, self.port = host, new_port
            elif kind == "http":
                self.http_addr = f"{host}:{new_port}"
            elif kind == "postgres":
                self.pg_host, self.pg_port = host, new_port
            self.listeners[kind] = (host, new_port)
            if self.expected_listeners <= self.listeners.keys():
                break
        # Keep draining stdout in the background (the pump thread owns it; the
        # queue just fills up harmlessly).
        return self

    def _force_kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self._join_pumps()

    def _join_pumps(self) -> None:
        for t in self._threads:
            t.join(timeout=5)
        self._threads = []

    def stop(self, timeout: float = STOP_TIMEOUT_S, sig: int = signal.SIGTERM) -> int:
        """Graceful stop (SIGTERM by default). Raises AssertionError if the
        process does not exit within `timeout` seconds (it is then killed)."""
        assert self.proc is not None, "broker never started"
        if self.proc.poll() is not None:
            self._join_pumps()
            return self.proc.returncode
        self.note(f"sending signal {sig}")
        t0 = time.monotonic()
        self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._force_kill()
            raise AssertionError(
                f"fluxo did not exit within {timeout}s of signal {sig}\n"
                f"--- log tail ---\n{self.log_tail()}")
        self.note(f"exited with {rc} after {time.monotonic() - t0:.2f}s")
        self._join_pumps()
        return rc

    def kill9(self) -> None:
        """SIGKILL the broker (simulated crash) and reap it."""
        assert self.proc is not None and self.proc.poll() is None, "broker not running"
        self.note("SIGKILL")
        self.proc.kill()
        self.proc.wait(timeout=10)
        self._join_pumps()

    def restart(self) -> "Broker":
        """Clean stop (asserting a 0 exit code) and start again on the same port and data dir."""
        rc = self.stop()
        assert rc == 0, f"fluxo exited with {rc} on SIGTERM\n{self.log_tail()}"
        return self.start(port=self.port)

    def close(self) -> None:
        try:
            self._force_kill()
        finally:
            with self._log_lock:
                if not self._log.closed:
                    self._log.close()


class EngineWorker(Broker):
    """A `fluxo serve --engine-only` process: the SQL engine, HTTP and
    Postgres fronts on the Kafka cluster at `cluster_bootstrap`, with no
    broker of its own."""

    expected_listeners = {"http", "postgres"}

    def __init__(self, workdir: Path, cluster_bootstrap: str, extra_args: list[str] | None = None,
                 name: str = "engine"):
        super().__init__(workdir, extra_args=extra_args, name=name)
        self.cluster_bootstrap = cluster_bootstrap

    def command(self, port: int) -> list[str]:
        return [
            self.bin, "serve", "--engine-only",
            "--kafka-bootstrap", self.cluster_bootstrap,
            "--data-dir", str(self.data_dir),
            "--http-addr", "127.0.0.1:0",
            "--pg-addr", "127.0.0.1:0",
            *self.extra_args,
        ]


@atexit.register
def _kill_leftovers() -> None:
    for b in _ALL_BROKERS:
        try:
            b.close()
        except Exception:
            pass


# -- pytest plumbing ------------------------------------------------------

@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)
    if rep.failed:
        for b in getattr(item, "_fluxo_brokers", []):
            rep.sections.append((f"fluxo {b.name} log tail ({b.log_path})", b.log_tail(120)))


def _failed(item) -> bool:
    return any(getattr(item, "rep_" + w, None) is not None and getattr(item, "rep_" + w).failed
               for w in ("setup", "call"))


@pytest.fixture
def broker_factory(request, tmp_path):
    """Return start(extra_args=None, name=None) -> running Broker. All
    brokers are stopped with SIGTERM at teardown; each must exit within 10 s
    with exit code 0."""
    brokers: list[Broker] = []
    request.node._fluxo_brokers = brokers

    def start(extra_args: list[str] | None = None, name: str | None = None) -> Broker:
        name = name or f"broker{len(brokers)}"
        b = Broker(tmp_path / name, extra_args=extra_args, name=name)
        brokers.append(b)
        b.start()
        return b

    yield start

    problems = []
    for b in brokers:
        try:
            if b.is_alive():
                rc = b.stop()
                if rc != 0:
                    problems.append(f"{b.name}: exit code {rc} after SIGTERM")
        except AssertionError as e:
            problems.append(f"{b.name}: {e}")
        finally:
            b.close()
    if problems and not _failed(request.node):
        pytest.fail("broker shutdown problems:\n" + "\n".join(problems), pytrace=False)
    elif problems:
        print("broker shutdown problems (after a failure):\n" + "\n".join(problems))


@pytest.fixture
def broker(broker_factory) -> Broker:
    return broker_factory(name="broker")


@pytest.fixture
def engine_factory(request, tmp_path, broker_factory):
    """Return start(cluster_bootstrap, extra_args=None, name=None) -> a
    running EngineWorker. Engines stop (SIGTERM, exit code 0) before the
    brokers they read."""
    engines: list[EngineWorker] = []

    def start(cluster_bootstrap: str, extra_args: list[str] | None = None,
              name: str | None = None) -> EngineWorker:
        name = name or f"engine{len(engines)}"
        e = EngineWorker(tmp_path / name, cluster_bootstrap, extra_args=extra_args, name=name)
        engines.append(e)
        # Their log tails show with the brokers' when a test fails.
        request.node._fluxo_brokers.append(e)
        e.start()
        return e

    yield start

    problems = []
    for e in engines:
        try:
            if e.is_alive():
                rc = e.stop()
                if rc != 0:
                    problems.append(f"{e.name}: exit code {rc} after SIGTERM")
        except AssertionError as err:
            problems.append(f"{e.name}: {err}")
        finally:
            e.close()
    if problems and not _failed(request.node):
        pytest.fail("engine shutdown problems:\n" + "\n".join(problems), pytrace=False)


@pytest.fixture
def new_topic(request):
    """new_topic(prefix='t') -> a topic name unique to this test."""
    base = re.sub(r"[^A-Za-z0-9._-]+", "-", request.node.name)[:80].strip("-")

    def make(prefix: str = "t") -> str:
        return f"{prefix}-{base}-{uuid.uuid4().hex[:8]}"

    return make
