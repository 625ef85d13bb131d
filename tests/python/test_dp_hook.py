"""scripts/dp-hook fires its command exactly once per applied job on its DP, also across a
restart (state file), with the package, version, DP, path and job id in the environment."""

import json
import os
import signal
import subprocess
import tempfile
import unittest

import harness
from harness import despool, wait_for

HOOK = os.path.join(harness.SCRIPTS, "dp-hook")
# The command the hook runs: appends one JSON line with its DESPOOL_* environment.
RECORDER = ("import json, os, sys\n"
            "with open(sys.argv[1], 'a') as f:\n"
            "    f.write(json.dumps({k: v for k, v in os.environ.items() if k.startswith('DESPOOL_')}) + '\\n')\n")


class DpHookTest(unittest.TestCase):
    def setUp(self):
        self.broker = harness.Broker().start()
        self.worker = harness.ScriptedWorker(self.broker.backend, ["lab1", "lab2"]).start()
        self.client = despool.Client(self.broker.frontend, timeout=10)
        self.dir = tempfile.mkdtemp(prefix="dp-hook-test-")
        self.log = os.path.join(self.dir, "fired.jsonl")
        self.state = os.path.join(self.dir, "state.json")
        self.hook = None

    def tearDown(self):
        self.stop_hook()
        self.client.close()
        self.worker.stop()
        self.broker.stop()
        subprocess.run(["rm", "-rf", self.dir])

    def start_hook(self, *extra):
        self.hook = subprocess.Popen(
            ["/usr/bin/python3", HOOK, "--dp", "lab1", "--root", "/srv/dp/lab1", "--state-file", self.state,
             *extra,
             "--broker", self.broker.frontend, "--events", self.broker.events, "--",
             "/usr/bin/python3", "-c", RECORDER, self.log],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def stop_hook(self):
        if self.hook is not None:
            self.hook.send_signal(signal.SIGTERM)
            try:
                self.hook.wait(10)
            except subprocess.TimeoutExpired:
                self.hook.kill()
                self.hook.wait()
            self.hook.stderr.close()
            self.hook = None

    def fired(self):
        try:
            with open(self.log) as f:
                return [json.loads(line) for line in f if line.strip()]
        except FileNotFoundError:
            return []

    def wait_fired(self, n):
        ok = wait_for(lambda: len(self.fired()) >= n, 30)
        self.assertTrue(ok, "hook fired %d times, expected %d" % (len(self.fired()), n))

    def submit_applied(self, package, version, dp="lab1"):
        ref = self.client.submit(package, version, "/srv/src/%s-%d" % (package, version), dps=[dp])[0]
        ok = wait_for(lambda: self.client.status(job_id=ref["id"])[0]["state"] == "applied", 30)
        self.assertTrue(ok, "job %s not applied" % ref["id"])
        return ref["id"]

    def test_fires_exactly_once_per_applied_job_and_resumes_after_a_restart(self):
        self.start_hook()
        # The hook writes its state file once it follows events from "now".
        self.assertTrue(wait_for(lambda: os.path.exists(self.state), 20))
        a1 = self.submit_applied("app", 1)
        self.submit_applied("other", 4, dp="lab2")    # another DP: never fires
        b1 = self.submit_applied("tool", 7)
        a2 = self.submit_applied("app", 2)
        self.wait_fired(3)
        # A sentinel proves nothing else is still on its way: once it fired, the count is final.
        s1 = self.submit_applied("sentinel", 1)
        self.wait_fired(4)
        fired = self.fired()
        self.assertEqual([f["DESPOOL_JOB_ID"] for f in fired], [a1, b1, a2, s1])
        hook_keys = ("DESPOOL_PACKAGE", "DESPOOL_VERSION", "DESPOOL_DP", "DESPOOL_JOB_ID", "DESPOOL_PATH",
                     "DESPOOL_SEQ")
        self.assertEqual({k: v for k, v in fired[0].items() if k in hook_keys}, {"DESPOOL_PACKAGE": "app", "DESPOOL_VERSION": "1", "DESPOOL_DP": "lab1",
                                    "DESPOOL_JOB_ID": a1, "DESPOOL_PATH": "/srv/dp/lab1/app",
                                    "DESPOOL_SEQ": fired[0]["DESPOOL_SEQ"]})
        self.assertEqual(fired[2]["DESPOOL_VERSION"], "2")

        # Down for a while: a job applied meanwhile fires once after the restart, old ones never.
        self.stop_hook()
        missed = self.submit_applied("app", 3)
        self.start_hook()
        self.wait_fired(5)
        s2 = self.submit_applied("sentinel", 2)
        self.wait_fired(6)
        ids = [f["DESPOOL_JOB_ID"] for f in self.fired()]
        self.assertEqual(ids, [a1, b1, a2, s1, missed, s2])
        self.assertEqual(len(set(ids)), len(ids))

    def test_survives_a_broker_restart(self):
        self.start_hook("--timeout", "1")
        self.assertTrue(wait_for(lambda: os.path.exists(self.state), 20))
        a = self.submit_applied("app", 1)
        self.wait_fired(1)
        # The broker goes away and comes back on the same endpoints with the same store.
        self.client.close()
        self.broker.kill()
        self.broker.start(same_endpoints=True)
        self.client = despool.Client(self.broker.frontend, timeout=10)
        # The scripted worker re-registers when the new broker tells it to (disconnect).
        b = None
        ok = wait_for(lambda: self.client.stats().get("workers", 0) >= 1, 30)
        self.assertTrue(ok, "the worker did not come back")
        b = self.submit_applied("app", 2)
        self.wait_fired(2)
        s = self.submit_applied("sentinel", 1)
        self.wait_fired(3)
        self.assertEqual([f["DESPOOL_JOB_ID"] for f in self.fired()], [a, b, s])

    def test_needs_a_command_and_a_dp(self):
        r = subprocess.run(["/usr/bin/python3", HOOK, "--dp", "lab1"], capture_output=True, text=True, timeout=30)
        self.assertEqual(r.returncode, 2)
        r = subprocess.run(["/usr/bin/python3", HOOK, "--", "true"], capture_output=True, text=True, timeout=30)
        self.assertEqual(r.returncode, 2)


if __name__ == "__main__":
    unittest.main()
