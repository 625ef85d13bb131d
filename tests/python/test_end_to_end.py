"""despoolctl, despool.py and dp-hook with the real broker and the real despool-worker on temp
DP roots: applied content, an in-use deferral reported with the holder, and the hook's
environment pointing at the live package."""

import json
import os
import shutil
import signal
import subprocess
import tempfile
import unittest

import harness
from harness import despool, despoolctl, wait_for

HOOK = os.path.join(harness.SCRIPTS, "dp-hook")
RECORDER = ("import json, os, sys\n"
            "p = os.environ['DESPOOL_PATH']\n"
            "with open(os.path.join(p, 'VERSION')) as v: content = v.read()\n"
            "with open(sys.argv[1], 'a') as f:\n"
            "    f.write(json.dumps({'job': os.environ['DESPOOL_JOB_ID'], 'version': os.environ['DESPOOL_VERSION'],\n"
            "                        'path': p, 'content': content}) + '\\n')\n")


def read_lines(path):
    try:
        with open(path) as f:
            return f.readlines()
    except FileNotFoundError:
        return []


class EndToEndTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="despool-e2e-")
        self.broker = harness.Broker().start()
        self.root = os.path.join(self.dir, "dp-lab1")
        self.worker = harness.Worker(self.broker.backend, {"lab1": self.root}, self.dir)
        self.client = despool.Client(self.broker.frontend, timeout=10)
        ok = wait_for(lambda: any("lab1" in w.get("dps", []) for w in self.client.workers()), 30)
        self.assertTrue(ok, "worker did not register: " + self.worker.read_log())
        self.hook = None

    def tearDown(self):
        if self.hook is not None:
            self.hook.send_signal(signal.SIGTERM)
            self.hook.wait(20)
        self.client.close()
        self.worker.stop()
        self.broker.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def source(self, version, files):
        d = os.path.join(self.dir, "src", "app-%d" % version)
        for rel, text in files.items():
            os.makedirs(os.path.dirname(os.path.join(d, rel)), exist_ok=True)
            with open(os.path.join(d, rel), "w") as f:
                f.write(text)
        return d

    def ctl(self, *args):
        return despoolctl("--broker", self.broker.frontend, "--events", self.broker.events, *args)

    def test_publish_defer_on_in_use_then_apply_with_the_hook_firing_once_per_applied_job(self):
        log = os.path.join(self.dir, "fired.jsonl")
        self.hook = subprocess.Popen(
            ["/usr/bin/python3", HOOK, "--dp", "lab1", "--root", self.root, "--state-file",
             os.path.join(self.dir, "hook.json"), "--broker", self.broker.frontend, "--events", self.broker.events,
             "--", "/usr/bin/python3", "-c", RECORDER, log],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.assertTrue(wait_for(lambda: os.path.exists(os.path.join(self.dir, "hook.json")), 20))

        v1 = self.source(1, {"VERSION": "one\n", "bin/app": "binary 1\n"})
        r = self.ctl("--json", "submit", "--package", "app", "--version", "1", "--source", v1, "--dp", "lab1",
                     "--wait", "--wait-timeout", "60s")
        self.assertEqual(r.returncode, 0, r.stderr + self.worker.read_log())
        self.assertEqual(json.loads(r.stdout)[0]["state"], "applied")
        with open(os.path.join(self.root, "app", "VERSION")) as f:
            self.assertEqual(f.read(), "one\n")

        # A reader holds bin/app open: version 2 is deferred, reported with the holder, and
        # applied once the reader lets go.
        holder = subprocess.Popen(["/usr/bin/python3", "-c",
                                   "import sys; f = open(sys.argv[1]); print('open', flush=True); sys.stdin.read()",
                                   os.path.join(self.root, "app", "bin", "app")],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            self.assertEqual(holder.stdout.readline().strip(), "open")
            v2 = self.source(2, {"VERSION": "two\n", "bin/app": "binary 2\n"})
            waiter = subprocess.Popen(
                [os.path.join(harness.BIN_DIR, "despoolctl"), "--broker", self.broker.frontend, "--events",
                 self.broker.events, "submit", "--package", "app", "--version", "2", "--source", v2, "--dp", "lab1",
                 "--retry-base", "500ms", "--retry-max", "1s", "--max-attempts", "50", "--wait",
                 "--wait-timeout", "90s"],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            lines = []
            while True:
                line = waiter.stdout.readline()
                if not line:
                    break
                lines.append(line)
                if "\tdeferred" in line:
                    break
            deferred = [line for line in lines if "\tdeferred" in line]
            self.assertTrue(deferred, "".join(lines))
            self.assertIn("in use: bin/app", deferred[0])
            self.assertIn("pid %d" % holder.pid, deferred[0])
            with open(os.path.join(self.root, "app", "VERSION")) as f:
                self.assertEqual(f.read(), "one\n", "nothing changed while in use")
        finally:
            holder.stdin.close()
            holder.wait(10)
            holder.stdout.close()
        out, err = waiter.communicate(timeout=120)
        self.assertEqual(waiter.returncode, 0, "".join(lines) + out + err)
        self.assertRegex(out, r"\tapplied")
        with open(os.path.join(self.root, "app", "VERSION")) as f:
            self.assertEqual(f.read(), "two\n")

        # The hook fired once per applied job, and saw the applied content at DESPOOL_PATH.
        self.assertTrue(wait_for(lambda: len(read_lines(log)) >= 2, 30))
        sentinel = self.source(3, {"VERSION": "three\n", "bin/app": "binary 3\n"})
        r = self.ctl("submit", "--package", "app", "--version", "3", "--source", sentinel, "--dp", "lab1", "--wait",
                     "--wait-timeout", "60s")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertTrue(wait_for(lambda: len(read_lines(log)) >= 3, 30))
        fired = [json.loads(line) for line in read_lines(log)]
        self.assertEqual([f["version"] for f in fired], ["1", "2", "3"])
        self.assertEqual(len({f["job"] for f in fired}), 3)
        self.assertEqual(fired[0]["path"], os.path.join(self.root, "app"))
        self.assertIn(fired[1]["content"], ("two\n", "three\n"))  # live content when the hook ran


if __name__ == "__main__":
    unittest.main()
