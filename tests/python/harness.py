"""Test harness for the Python client and dp-hook: a real despool-broker on ephemeral ports and
a scripted worker speaking the backend protocol over a DEALER socket.

Synchronisation is always "poll an observable condition until it holds or a deadline passes";
every process started here is stopped by the test that started it.
"""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import msgpack
import zmq

SOURCE_DIR = os.environ.get("DESPOOL_SOURCE_DIR",
                            os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))
BIN_DIR = os.environ.get("DESPOOL_BIN_DIR", os.path.join(SOURCE_DIR, "build", "bin"))
SCRIPTS = os.path.join(SOURCE_DIR, "scripts")
sys.path.insert(0, SCRIPTS)

import despool  # noqa: E402


def wait_for(cond, timeout=20.0, interval=0.02):
    """Polls cond() until it is truthy or `timeout` seconds passed; returns its last value."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v or time.monotonic() >= deadline:
            return v
        time.sleep(interval)  # polling interval, not a synchronisation point


class Broker:
    """despool-broker with DPs lab1 and lab2 (group "both") on tcp://127.0.0.1:* ports."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="despool-py-test-")
        self.proc = None
        self.frontend = self.backend = self.events = None

    def start(self, same_endpoints=False):
        """Starts the broker; same_endpoints=True restarts it on the ports it had (same store)."""
        config = os.path.join(self.dir, "broker.toml")
        with open(config, "w") as f:
            f.write('[dps]\nnames = ["lab1", "lab2"]\n[dp_groups]\nboth = ["lab1", "lab2"]\n')
        ep_file = os.path.join(self.dir, "endpoints")
        if os.path.exists(ep_file):
            os.remove(ep_file)
        eps = ((self.frontend, self.backend, self.events) if same_endpoints
               else ("tcp://127.0.0.1:*",) * 3)
        self.log = open(os.path.join(self.dir, "broker.log"), "a")
        self.proc = subprocess.Popen(
            [os.path.join(BIN_DIR, "despool-broker"), "--config", config,
             "--frontend", eps[0], "--backend", eps[1],
             "--events", eps[2], "--store", os.path.join(self.dir, "data", "broker.db"),
             "--endpoints-file", ep_file, "--log-level", "debug"],
            stdout=self.log, stderr=subprocess.STDOUT)

        def endpoints():
            if self.proc.poll() is not None:
                raise RuntimeError("despool-broker exited: %s" % self.read_log())
            try:
                with open(ep_file) as f:
                    kv = dict(line.strip().split("=", 1) for line in f if "=" in line)
            except FileNotFoundError:
                return None
            return kv if len(kv) >= 3 else None

        kv = wait_for(endpoints, 20)
        if not kv:
            raise RuntimeError("despool-broker did not start: %s" % self.read_log())
        self.frontend, self.backend, self.events = kv["frontend"], kv["backend"], kv["events"]
        return self

    def read_log(self):
        try:
            with open(os.path.join(self.dir, "broker.log")) as f:
                return f.read()[-4000:]
        except OSError:
            return ""

    def kill(self):
        """Stops the process only (store and directory stay, for a restart)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None:
            self.log.close()
            self.proc = None

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None:
            self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def _pack(t, body):
    return msgpack.packb({"v": 1, "t": t, "id": 0, "b": body}, use_bin_type=True)


class ScriptedWorker:
    """A worker that registers for `dps` and answers every dispatch with `outcome(dispatch)`.

    outcome(dispatch) returns a result body without job_id/attempt (e.g. {"outcome": "applied"}).
    Heartbeats every second so the broker keeps it alive.
    """

    def __init__(self, backend, dps, name="py-worker", outcome=None):
        self.backend = backend
        self.dps = list(dps)
        self.name = name
        self.outcome = outcome or (lambda d: {"outcome": "applied", "installed_version": d.get("version", 0)})
        self.dispatched = []
        self.registered = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self):
        self._thread.start()
        if not self.registered.wait(20):
            raise RuntimeError("scripted worker did not get a register-ack")
        return self

    def stop(self):
        self._stop.set()
        self._thread.join(10)

    def _run(self):
        ctx = zmq.Context.instance()
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(self.backend)
        s.send(_pack("register", {"name": self.name, "dps": self.dps, "capacity": 4}))
        poller = zmq.Poller()
        poller.register(s, zmq.POLLIN)
        next_beat = time.monotonic() + 1.0
        try:
            while not self._stop.is_set():
                if time.monotonic() >= next_beat:
                    s.send(_pack("heartbeat", {"running": 0}))
                    next_beat = time.monotonic() + 1.0
                if not poller.poll(100):
                    continue
                env = msgpack.unpackb(s.recv(), raw=False)
                t, body = env.get("t"), env.get("b") or {}
                if t == "register-ack":
                    self.registered.set()
                elif t == "dispatch":
                    self.dispatched.append(body)
                    result = dict(self.outcome(body))
                    result.update({"job_id": body["job_id"], "attempt": body["attempt"]})
                    s.send(_pack("result", result))
                elif t == "disconnect":
                    s.send(_pack("register", {"name": self.name, "dps": self.dps, "capacity": 4}))
        finally:
            s.close(linger=0)


class Worker:
    """The real despool-worker serving {dp: root}."""

    def __init__(self, backend, dps, log_dir, extra=()):
        args = [os.path.join(BIN_DIR, "despool-worker"), "--broker", backend, "--name", "e2e-worker"]
        for dp, root in dps.items():
            os.makedirs(root, exist_ok=True)
            args += ["--dp", "%s=%s" % (dp, root)]
        args += list(extra)
        self.log = open(os.path.join(log_dir, "worker.log"), "a")
        self.log_path = self.log.name
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT)

    def read_log(self):
        with open(self.log_path) as f:
            return f.read()[-4000:]

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def despoolctl(*args, timeout=60):
    """Runs despoolctl; returns the CompletedProcess (text)."""
    return subprocess.run([os.path.join(BIN_DIR, "despoolctl")] + list(args), capture_output=True, text=True,
                          timeout=timeout)


def despool_py(*args, timeout=60):
    return subprocess.run(["/usr/bin/python3", os.path.join(SCRIPTS, "despool.py")] + list(args),
                          capture_output=True, text=True, timeout=timeout)
