"""scripts/despool.py (module and command) and despoolctl against a live despool-broker, with a
scripted worker driving jobs to their end."""

import json
import os
import socket
import time
import unittest

import harness
from harness import despool, despool_py, despoolctl, wait_for


def dead_endpoint():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return "tcp://127.0.0.1:%d" % port


class PythonClientTest(unittest.TestCase):
    def setUp(self):
        self.broker = harness.Broker().start()
        self.workers = []
        self.client = despool.Client(self.broker.frontend, timeout=10)

    def tearDown(self):
        self.client.close()
        for w in self.workers:
            w.stop()
        self.broker.stop()

    def worker(self, dps, **kw):
        w = harness.ScriptedWorker(self.broker.backend, dps, **kw).start()
        self.workers.append(w)
        return w

    def test_submit_status_and_events_through_the_module(self):
        follower = despool.EventFollower(self.client, self.broker.events, dp="lab1")
        follower.start()
        refs = self.client.submit("app", 3, "/srv/src/app-3", dp_groups=["both"])
        self.assertEqual([r["dp"] for r in refs], ["lab1", "lab2"])
        jobs = self.client.status(job_id=refs[0]["id"])
        self.assertEqual(len(jobs), 1)
        self.assertEqual(jobs[0]["state"], "queued")
        self.assertEqual(jobs[0]["package"], "app")
        self.assertEqual(jobs[0]["version"], 3)

        self.worker(["lab1"])
        states = []
        deadline = time.monotonic() + 30
        while "applied" not in states and time.monotonic() < deadline:
            ev = follower.next(1.0)
            if ev is not None and ev["kind"] == "state":
                self.assertEqual(ev["job"]["dp"], "lab1", "the DP filter holds")
                states.append(ev["job"]["state"])
        follower.close()
        self.assertEqual(states[0], "queued")
        self.assertIn("running", states)
        self.assertEqual(states[-1], "applied")
        seqs = []
        self.assertEqual(self.client.status(job_id=refs[0]["id"])[0]["state"], "applied")
        self.assertEqual(self.client.status(job_id=refs[1]["id"])[0]["state"], "queued")  # no lab2 worker
        # Replay from the start: the same events, once each, in seq order.
        replay = despool.EventFollower(self.client, self.broker.events, dp="lab1", since=0)
        replay.start()
        while True:
            ev = replay.next(0.5)
            if ev is None:
                break
            seqs.append(ev["seq"])
        replay.close()
        self.assertEqual(seqs, sorted(set(seqs)))
        self.assertEqual(len(seqs), len(states))

    def test_error_replies_raise(self):
        with self.assertRaises(despool.DespoolError) as cm:
            self.client.status(job_id="no-such-job")
        self.assertEqual(cm.exception.kind, "not-found")
        with self.assertRaises(despool.DespoolError) as cm:
            self.client.submit("app", 1, "/srv/src/app", dps=["nowhere"])
        self.assertEqual(cm.exception.kind, "unknown-dp")

    def test_command_output_matches_despoolctl(self):
        r = despool_py("--broker", self.broker.frontend, "submit", "--package", "tool", "--version", "9",
                       "--source", "/srv/src/tool", "--dp", "lab2")
        self.assertEqual(r.returncode, 0, r.stderr)
        job_id, dp = r.stdout.strip().split("\t")
        self.assertEqual(dp, "lab2")
        py = despool_py("--broker", self.broker.frontend, "status", job_id)
        self.assertEqual(py.returncode, 0, py.stderr)
        ctl = despoolctl("--broker", self.broker.frontend, "--json", "status", job_id)
        self.assertEqual(ctl.returncode, 0, ctl.stderr)
        self.assertEqual(json.loads(py.stdout), json.loads(ctl.stdout))

    def test_command_wait_reports_final_jobs(self):
        self.worker(["lab1"])
        r = despool_py("--broker", self.broker.frontend, "--events", self.broker.events, "submit",
                       "--package", "app", "--version", "5", "--source", "/srv/src/app", "--dp", "lab1",
                       "--wait", "--wait-timeout", "60s")
        self.assertEqual(r.returncode, 0, r.stderr)
        jobs = json.loads(r.stdout)
        self.assertEqual(len(jobs), 1)
        self.assertEqual(jobs[0]["state"], "applied")

    def test_command_events_streams_json_lines(self):
        self.client.submit("app", 1, "/srv/src/app", dps=["lab1"])
        import subprocess
        p = subprocess.Popen(["/usr/bin/python3", os.path.join(harness.SCRIPTS, "despool.py"),
                              "--broker", self.broker.frontend, "--events", self.broker.events,
                              "events", "--since", "0", "--dp", "lab1"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            line = p.stdout.readline()
            ev = json.loads(line)
            self.assertEqual(ev["seq"], 1)
            self.assertEqual(ev["kind"], "state")
            self.assertEqual(ev["job"]["state"], "queued")
            self.assertIsNone(ev["progress"])
        finally:
            p.terminate()
            p.wait(10)
            p.stdout.close()
            p.stderr.close()

    def test_command_exit_codes(self):
        ep = dead_endpoint()
        t0 = time.monotonic()
        r = despool_py("--broker", ep, "--timeout", "300ms", "status")
        self.assertEqual(r.returncode, 1)
        self.assertIn(ep, r.stderr)
        self.assertLess(time.monotonic() - t0, 10)
        self.assertEqual(despool_py("status", "--limit", "-1").returncode, 2)
        self.assertEqual(despool_py("submit", "--package", "a").returncode, 2)
        self.assertEqual(despool_py("--broker", self.broker.frontend, "status", "nope").returncode, 1)


class DespoolctlLiveBrokerTest(unittest.TestCase):
    """despoolctl against the real broker (scripted worker)."""

    def setUp(self):
        self.broker = harness.Broker().start()
        self.workers = []

    def tearDown(self):
        for w in self.workers:
            w.stop()
        self.broker.stop()

    def ctl(self, *args, **kw):
        return despoolctl("--broker", self.broker.frontend, "--events", self.broker.events, *args, **kw)

    def test_wait_applied_exits_zero(self):
        self.workers.append(harness.ScriptedWorker(self.broker.backend, ["lab1", "lab2"]).start())
        r = self.ctl("--json", "submit", "--package", "app", "--version", "2", "--source", "/srv/src/app",
                     "--dp-group", "both", "--wait", "--wait-timeout", "60s")
        self.assertEqual(r.returncode, 0, r.stderr)
        jobs = json.loads(r.stdout)
        self.assertEqual(sorted(j["dp"] for j in jobs), ["lab1", "lab2"])
        self.assertTrue(all(j["state"] == "applied" for j in jobs), jobs)

    def test_wait_dead_exits_three_and_retry_requeues(self):
        self.workers.append(harness.ScriptedWorker(
            self.broker.backend, ["lab1"],
            outcome=lambda d: {"outcome": "permanent-error", "error": "source missing"}).start())
        r = self.ctl("submit", "--package", "app", "--version", "2", "--source", "/srv/src/app", "--dp", "lab1",
                     "--wait", "--wait-timeout", "60s")
        self.assertEqual(r.returncode, 3, r.stdout + r.stderr)
        job_id = r.stdout.splitlines()[0].split("\t")[0]
        self.assertIn("%s\tlab1\tdead" % job_id, r.stdout)
        dead = json.loads(self.ctl("--json", "dead").stdout)
        self.assertEqual([j["id"] for j in dead], [job_id])
        self.assertEqual(dead[0]["last_error"], "source missing")

    def test_deferral_is_reported_with_in_use_files_and_holders(self):
        calls = []

        def outcome(d):
            calls.append(d)
            if len(calls) == 1:
                return {"outcome": "deferred", "in_use": ["bin/app"],
                        "holders": [{"pid": 4242, "command": "app", "path": "bin/app"}],
                        "suggested_delay_ms": 100}
            return {"outcome": "applied", "installed_version": d["version"]}

        self.workers.append(harness.ScriptedWorker(self.broker.backend, ["lab1"], outcome=outcome).start())
        r = self.ctl("submit", "--package", "app", "--version", "2", "--source", "/srv/src/app", "--dp", "lab1",
                     "--retry-base", "250ms", "--retry-max", "500ms", "--wait", "--wait-timeout", "60s")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("deferred: ", r.stdout)
        self.assertIn("in use: bin/app (pid 4242 app holds bin/app)", r.stdout)
        self.assertIn("next attempt at ", r.stdout)
        self.assertRegex(r.stdout, r"\tapplied")

    def test_wait_timeout_exits_four_and_unknown_job_one(self):
        r = self.ctl("submit", "--package", "app", "--version", "2", "--source", "/srv/src/app", "--dp", "lab2",
                     "--wait", "--wait-timeout", "300ms")
        self.assertEqual(r.returncode, 4, r.stderr)
        r = self.ctl("status", "nosuchjob")
        self.assertEqual(r.returncode, 1)
        self.assertIn("not-found", r.stderr)
        r = self.ctl("submit", "--package", "app", "--version", "2", "--source", "/srv/src/app", "--dp", "mars")
        self.assertEqual(r.returncode, 1)
        self.assertIn("unknown-dp", r.stderr)


if __name__ == "__main__":
    unittest.main()
