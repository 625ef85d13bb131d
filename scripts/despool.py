#!/usr/bin/python3
"""despool.py: a small Python client for despool (publish, status, events).

It speaks the same protocol as despoolctl (messages/PROTOCOL.md): every request is one
msgpack frame {"v": 1, "t": TYPE, "id": REQUEST_ID, "b": BODY} sent from a DEALER to the
broker's frontend ROUTER; the reply is one frame with the same id. Events arrive on a SUB socket
as [topic][envelope], topic "dp/<dp>/pkg/<package>/".

Needs Debian's python3-zmq and python3-msgpack (hence /usr/bin/python3, not a pyenv python).

As a module:
    import despool
    c = despool.Client("tcp://127.0.0.1:7400", timeout=10)
    refs = c.submit("app", 42, "/srv/src/app-42", dps=["lab1"])   # [{"id":..., "dp":...}]
    jobs = c.status(job_id=refs[0]["id"])                          # job dicts (wire form)
    f = despool.EventFollower(c, "tcp://127.0.0.1:7402", dp="lab1")
    f.start()
    ev = f.next(timeout=1.0)                                       # event dict or None

As a command (output shapes as `despoolctl --json`, exit codes as despoolctl):
    despool.py [--broker EP] [--events EP] [--timeout SECONDS] submit --package P --version N
               --source DIR (--dp NAME | --dp-group NAME)... [--wait] [--wait-timeout SECONDS]
    despool.py status [JOB_ID] [--package P] [--dp NAME] [--state STATE] [--limit N]
    despool.py events [--dp NAME] [--package P] [--since SEQ]      # JSON Lines, until killed
"""

import argparse
import datetime
import json
import os
import re
import stat
import sys
import time

import msgpack
import zmq

PROTOCOL_VERSION = 1
DEFAULT_FRONTEND = "tcp://127.0.0.1:7400"
DEFAULT_EVENTS = "tcp://127.0.0.1:7402"
TERMINAL_STATES = {"applied", "up-to-date", "superseded", "cancelled", "dead"}
EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_JOB_FAILED, EXIT_WAIT_TIMEOUT = 0, 1, 2, 3, 4


class DespoolError(Exception):
    """An error reply from the broker (kind is the protocol's ErrorKind) or a transport error."""

    def __init__(self, kind, message):
        super().__init__("%s: %s" % (kind, message))
        self.kind = kind
        self.message = message


class Unavailable(DespoolError):
    """The broker did not answer within the timeout."""

    def __init__(self, message):
        super().__init__("unavailable", message)


def encode(msg_type, body, request_id=0):
    return msgpack.packb({"v": PROTOCOL_VERSION, "t": msg_type, "id": request_id, "b": body},
                         use_bin_type=True)


def decode(frame):
    """Returns (type, request_id, body); raises DespoolError on a malformed envelope."""
    try:
        env = msgpack.unpackb(frame, raw=False, strict_map_key=True, unicode_errors="surrogateescape")
    except Exception as e:  # msgpack raises several unrelated exception types
        raise DespoolError("bad-request", "undecodable frame: %s" % e)
    if not isinstance(env, dict) or not isinstance(env.get("t"), str):
        raise DespoolError("bad-request", "not an envelope")
    if env.get("v") != PROTOCOL_VERSION:
        raise DespoolError("unsupported-version", "protocol version %r" % env.get("v"))
    body = env.get("b") or {}
    return env["t"], env.get("id", 0) or 0, body


def _drop_none(d):
    return {k: v for k, v in d.items() if v is not None}


def rfc3339_ms(ms):
    """Milliseconds since the epoch -> "2026-11-25T21:22:33.123Z" (None stays None)."""
    if ms is None:
        return None
    dt = datetime.datetime.fromtimestamp(ms // 1000, tz=datetime.timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + ".%03dZ" % (ms % 1000)


def job_json(job):
    """A job from the wire -> the shape `despoolctl status --json` prints (docs/despoolctl.md)."""
    out = {
        "id": job.get("id", ""),
        "kind": job.get("kind", "refresh"),
        "package": job.get("package", ""),
        "version": job.get("version", 0),
        "dp": job.get("dp", ""),
        "source": job.get("source", ""),
        "state": job.get("state", ""),
        "attempts": job.get("attempts", 0),
        "max_attempts": job.get("max_attempts", 0),
        "next_attempt_at": rfc3339_ms(job.get("next_attempt_at_ms")),
        "last_error": job.get("last_error"),
        "in_use": list(job.get("in_use", [])),
        "holders": [{"pid": h.get("pid", 0), "command": h.get("command", ""), "path": h.get("path", "")}
                    for h in job.get("holders", [])],
        "worker": job.get("worker"),
        "created_at": rfc3339_ms(job.get("created_at_ms", 0)),
        "updated_at": rfc3339_ms(job.get("updated_at_ms", 0)),
        "stats": job.get("stats"),
    }
    if out["kind"] == "verify":
        r = job.get("report")
        out["report"] = None if r is None else {
            "missing": r.get("missing", []), "extra": r.get("extra", []), "changed": r.get("changed", [])}
    return out


def event_json(event):
    """An event from the wire -> one `despoolctl watch --json` line (as a dict)."""
    return {
        "seq": event.get("seq", 0),
        "kind": event.get("kind", "state"),
        "at": rfc3339_ms(event.get("at_ms", 0)),
        "job": job_json(event.get("job", {})),
        "progress": event.get("progress"),
    }


def _read_key(path, name):
    with open(path) as f:
        text = f.read()
    if re.fullmatch(r"\s*\S{40}\s*", text) and name == "public":
        return text.strip()
    m = re.search(r'^\s*%s\s*=\s*"([^"]{40})"' % name, text, re.M)
    if not m:
        raise DespoolError("bad-request", "%s: no %s key" % (path, name))
    return m.group(1)


def load_curve(server_key_path, key_path):
    """CURVE keys from files (docs/security.md): the broker's public key file and our secret key
    file (PREFIX.key from `despoolctl keygen`, mode 0600). Returns None when both are None."""
    if not server_key_path and not key_path:
        return None
    if not server_key_path or not key_path:
        raise DespoolError("bad-request", "CURVE needs both --curve-server-key and --curve-key")
    mode = stat.S_IMODE(os.stat(key_path).st_mode)
    if mode & 0o077:
        raise DespoolError("bad-request", "secret key file '%s' has mode %04o: it must not be accessible "
                           "by group or others (chmod 600 '%s')" % (key_path, mode, key_path))
    secret = _read_key(key_path, "secret")
    public = zmq.curve_public(secret.encode()).decode()
    return {"server": _read_key(server_key_path, "public"), "public": public, "secret": secret}


def _apply_curve(sock, curve):
    if curve:
        sock.curve_serverkey = curve["server"].encode()
        sock.curve_publickey = curve["public"].encode()
        sock.curve_secretkey = curve["secret"].encode()


class Client:
    """Requests to the broker's frontend, each bounded by a timeout (seconds).

    After a timeout the socket is replaced, so a late reply never answers a later request.
    Not thread-safe.
    """

    def __init__(self, endpoint=DEFAULT_FRONTEND, timeout=10.0, context=None, curve=None):
        self.endpoint = endpoint
        self.timeout = timeout
        self.curve = curve  # load_curve(...) or None
        self.context = context or zmq.Context.instance()
        self._next_id = 1
        self._socket = None
        self._connect()

    def _connect(self):
        if self._socket is not None:
            self._socket.close(linger=0)
        self._socket = self.context.socket(zmq.DEALER)
        self._socket.setsockopt(zmq.LINGER, 0)
        _apply_curve(self._socket, self.curve)
        self._socket.connect(self.endpoint)

    def close(self):
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def request(self, msg_type, body=None, timeout=None):
        """Sends one request; returns (reply_type, reply_body). Error replies raise DespoolError."""
        timeout = self.timeout if timeout is None else timeout
        if self._socket is None:
            self._connect()
        request_id = self._next_id
        self._next_id += 1
        deadline = time.monotonic() + timeout
        try:
            self._socket.send(encode(msg_type, body or {}, request_id), zmq.NOBLOCK)
        except zmq.Again:
            self._connect()
            raise Unavailable("broker %s did not accept a request within %gs" % (self.endpoint, timeout))
        poller = zmq.Poller()
        poller.register(self._socket, zmq.POLLIN)
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not poller.poll(max(1, int(left * 1000))):
                if time.monotonic() < deadline:
                    continue
                self._connect()
                raise Unavailable("broker %s did not answer within %gs (is despool-broker running "
                                  "and listening there?)" % (self.endpoint, timeout))
            frames = self._socket.recv_multipart()
            try:
                reply_type, reply_id, reply_body = decode(frames[0])
            except DespoolError:
                continue
            if reply_id != request_id:
                continue  # a stale reply to an abandoned request
            if reply_type == "error":
                raise DespoolError(reply_body.get("kind", "internal"), reply_body.get("message", ""))
            return reply_type, reply_body

    # Typed helpers: bodies and results are the wire form (PROTOCOL.md section 7).
    def submit_many(self, instructions, timeout=None):
        """instructions: dicts shaped like PROTOCOL.md's Instruction. One durable ack for all."""
        _, body = self.request("submit", {"instructions": list(instructions)}, timeout)
        return body.get("jobs", [])

    def submit(self, package, version, source, dps=(), dp_groups=(), retry_base_ms=None,
               retry_max_ms=None, max_attempts=None, on_exhausted=None, checksum=False, timeout=None):
        policy = _drop_none({"retry_base_ms": retry_base_ms, "retry_max_ms": retry_max_ms,
                             "max_attempts": max_attempts, "on_exhausted": on_exhausted})
        ins = {"package": package, "version": int(version), "source": source}
        if dps:
            ins["dps"] = list(dps)
        if dp_groups:
            ins["dp_groups"] = list(dp_groups)
        if policy:
            ins["policy"] = policy
        if checksum:
            ins["checksum"] = True
        return self.submit_many([ins], timeout)

    def status(self, job_id=None, package=None, dp=None, state=None, limit=1000, timeout=None):
        body = _drop_none({"job_id": job_id, "package": package, "dp": dp, "state": state})
        body["limit"] = limit
        _, reply = self.request("status", body, timeout)
        return reply.get("jobs", [])

    def workers(self, timeout=None):
        return self.request("workers", {}, timeout)[1].get("workers", [])

    def dead(self, limit=1000, timeout=None):
        return self.request("dead", {"limit": limit}, timeout)[1].get("jobs", [])

    def retry(self, job_id, timeout=None):
        return self.request("retry", {"job_id": job_id}, timeout)[1].get("jobs", [])

    def cancel(self, job_id, timeout=None):
        return self.request("cancel", {"job_id": job_id}, timeout)[1].get("jobs", [])

    def stats(self, timeout=None):
        return self.request("stats", {}, timeout)[1]

    def verify(self, dp, package=None, repair=False, timeout=None):
        body = _drop_none({"dp": dp, "package": package})
        if repair:
            body["repair"] = True
        return self.request("verify", body, timeout)[1].get("jobs", [])

    def events_since(self, since=0, dp=None, package=None, limit=10000, timeout=None):
        body = _drop_none({"since": since, "dp": dp, "package": package})
        body["limit"] = limit
        return self.request("events-since", body, timeout)[1]


def topic_prefix(dp=None, package=None):
    if dp is None:
        return "dp/"
    if package is None:
        return "dp/%s/" % dp
    return "dp/%s/pkg/%s/" % (dp, package)


class EventFollower:
    """Follows events for a DP/package filter without gaps or duplicates.

    Subscribes first, then fetches stored events over the frontend (events-since), then
    delivers live events, dropping state events whose seq was already delivered. Until the
    first live event arrives (ZeroMQ's slow joiner), and every resync interval after that, it
    asks the broker for stored events again. Progress events (seq 0) are live only.
    """

    def __init__(self, client, events=DEFAULT_EVENTS, dp=None, package=None, since=None, resync=2.0):
        self.client = client
        self.events_endpoint = events
        self.dp = dp
        self.package = package
        self.since = since
        self.resync = resync
        self.last_seq = 0
        self._ready = []
        self._sub = None
        self._live = False
        self._last_activity = 0.0

    def start(self):
        self._sub = self.client.context.socket(zmq.SUB)
        self._sub.setsockopt(zmq.LINGER, 0)
        self._sub.setsockopt(zmq.SUBSCRIBE, topic_prefix(self.dp, self.package).encode())
        _apply_curve(self._sub, self.client.curve)
        self._sub.connect(self.events_endpoint)
        self._last_activity = time.monotonic()
        if self.since is None:
            reply = self.client.events_since(since=0, limit=1)
            self.last_seq = reply.get("last_seq", 0)
            return
        self.last_seq = self.since
        probe = self.client.events_since(since=self.since, dp=self.dp, package=self.package, limit=1)
        oldest = probe.get("oldest_seq", 0)
        if oldest > 0 and self.since + 1 < oldest:
            raise DespoolError("not-found", "events after seq %d are no longer retained; the oldest "
                                            "available is seq %d" % (self.since, oldest))
        self._fetch_stored()

    def close(self):
        if self._sub is not None:
            self._sub.close(linger=0)
            self._sub = None

    def _matches(self, event):
        job = event.get("job", {})
        if self.dp is not None and job.get("dp") != self.dp:
            return False
        if self.package is not None and job.get("package") != self.package:
            return False
        return True

    def _enqueue(self, event):
        if not self._matches(event):
            return
        seq = event.get("seq", 0)
        if event.get("kind", "state") == "state" or seq:
            if seq <= self.last_seq:
                return
            self.last_seq = seq
        self._ready.append(event)

    def _fetch_stored(self):
        limit = 10000
        while True:
            reply = self.client.events_since(since=self.last_seq, dp=self.dp, package=self.package,
                                             limit=limit)
            events = reply.get("events", [])
            before = self.last_seq
            highest = before
            for e in events:
                highest = max(highest, e.get("seq", 0))
                self._enqueue(e)
            last = reply.get("last_seq", 0)
            if len(events) < limit or highest <= before or highest >= last:
                if len(events) < limit and last > self.last_seq:
                    self.last_seq = last
                return
            self.last_seq = max(self.last_seq, highest)

    def next(self, timeout=1.0):
        """The next event (a dict in wire form) or None when `timeout` seconds passed."""
        deadline = time.monotonic() + timeout
        poller = zmq.Poller()
        poller.register(self._sub, zmq.POLLIN)
        while True:
            if self._ready:
                return self._ready.pop(0)
            now = time.monotonic()
            interval = self.resync * (5 if self._live else 1)
            if now - self._last_activity >= interval:
                self._last_activity = now
                self._fetch_stored()
                if self._ready:
                    continue
            if now >= deadline:
                return None
            wake = min(deadline, self._last_activity + interval)
            if not poller.poll(max(1, int((wake - now) * 1000))):
                continue
            frames = self._sub.recv_multipart()
            if len(frames) < 2:
                continue
            try:
                t, _, body = decode(frames[1])
            except DespoolError:
                continue
            if t != "event":
                continue
            self._last_activity = time.monotonic()
            if not self._live:
                # The subscription works: anything published before it went live is stored.
                self._live = True
                self._fetch_stored()
            self._enqueue(body)


# ------------------------------------------------------------------------------------------
# The command


class _UsageParser(argparse.ArgumentParser):
    def error(self, message):
        self.print_usage(sys.stderr)
        sys.stderr.write("despool.py: %s\n" % message)
        sys.exit(EXIT_USAGE)


def _non_negative_int(text):
    if not text.isdigit():
        raise argparse.ArgumentTypeError("must be a non-negative integer: %r" % text)
    return int(text)


def _seconds(text):
    units = (("ms", 0.001), ("s", 1.0), ("m", 60.0), ("h", 3600.0))
    for suffix, factor in units:
        if text.endswith(suffix) and text[:-len(suffix)].replace(".", "", 1).isdigit():
            return float(text[:-len(suffix)]) * factor
    if text.replace(".", "", 1).isdigit():
        return float(text)
    raise argparse.ArgumentTypeError("not a duration: %r (e.g. 250ms, 30s, 5m, 2h)" % text)


def _parser():
    p = _UsageParser(prog="despool.py", description="despool Python client")
    p.add_argument("--broker", default=DEFAULT_FRONTEND, help="broker frontend endpoint")
    p.add_argument("--events", default=DEFAULT_EVENTS, help="broker events endpoint")
    p.add_argument("--timeout", type=_seconds, default=10.0, help="bound on each request")
    p.add_argument("--curve-server-key", help="the broker's CURVE public key file (docs/security.md)")
    p.add_argument("--curve-key", help="our CURVE secret key file (mode 0600)")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("submit", help="publish a package version")
    s.add_argument("--package", required=True)
    s.add_argument("--version", required=True, type=_non_negative_int)
    s.add_argument("--source", required=True)
    s.add_argument("--dp", action="append", default=[])
    s.add_argument("--dp-group", action="append", default=[])
    s.add_argument("--wait", action="store_true")
    s.add_argument("--wait-timeout", type=_seconds)
    st = sub.add_parser("status", help="show jobs (JSON)")
    st.add_argument("job_id", nargs="?")
    st.add_argument("--package")
    st.add_argument("--dp")
    st.add_argument("--state")
    st.add_argument("--limit", type=_non_negative_int, default=1000)
    ev = sub.add_parser("events", help="follow events (JSON Lines)")
    ev.add_argument("--dp")
    ev.add_argument("--package")
    ev.add_argument("--since", type=_non_negative_int)
    return p


def _wait(client, follower, refs, wait_timeout):
    ids = {r["id"] for r in refs}
    latest = {}
    start = time.monotonic()

    def consider(job):
        if job.get("id") in ids:
            prev = latest.get(job["id"])
            if prev is None or prev.get("updated_at_ms", 0) <= job.get("updated_at_ms", 0):
                latest[job["id"]] = job

    def pending():
        return [i for i in ids if latest.get(i, {}).get("state") not in TERMINAL_STATES]

    for i in ids:
        for job in client.status(job_id=i):
            consider(job)
    timed_out = False
    while pending():
        if wait_timeout is not None and time.monotonic() - start >= wait_timeout:
            timed_out = True
            break
        ev = follower.next(1.0)
        if ev is not None and ev.get("kind") == "state":
            consider(ev.get("job", {}))
    return [latest.get(r["id"], {"id": r["id"], "dp": r["dp"]}) for r in refs], timed_out


def main(argv=None):
    args = _parser().parse_args(argv)
    if args.command == "submit" and not args.dp and not args.dp_group:
        sys.stderr.write("despool.py: submit needs --dp or --dp-group\n")
        return EXIT_USAGE
    try:
        curve = load_curve(args.curve_server_key, args.curve_key)
    except (OSError, DespoolError) as e:
        sys.stderr.write("despool.py: %s\n" % e)
        return EXIT_USAGE
    client = Client(args.broker, timeout=args.timeout, curve=curve)
    try:
        if args.command == "submit":
            source = os.path.abspath(args.source)
            follower = None
            if args.wait:
                follower = EventFollower(client, args.events)
                follower.start()
            refs = client.submit(args.package, args.version, source, dps=args.dp, dp_groups=args.dp_group)
            if not args.wait:
                for r in refs:
                    print("%s\t%s" % (r["id"], r["dp"]))
                return EXIT_OK
            jobs, timed_out = _wait(client, follower, refs, args.wait_timeout)
            print(json.dumps([job_json(j) for j in jobs], indent=2, sort_keys=True))
            if any(j.get("state") in ("dead", "cancelled") for j in jobs):
                return EXIT_JOB_FAILED
            return EXIT_WAIT_TIMEOUT if timed_out else EXIT_OK
        if args.command == "status":
            jobs = client.status(job_id=args.job_id, package=args.package, dp=args.dp, state=args.state,
                                 limit=args.limit)
            print(json.dumps([job_json(j) for j in jobs], indent=2, sort_keys=True))
            return EXIT_OK
        if args.command == "events":
            follower = EventFollower(client, args.events, dp=args.dp, package=args.package, since=args.since)
            follower.start()
            while True:
                ev = follower.next(1.0)
                if ev is not None:
                    sys.stdout.write(json.dumps(event_json(ev), sort_keys=True) + "\n")
                    sys.stdout.flush()
    except DespoolError as e:
        sys.stderr.write("despool.py: %s: %s\n" % (args.command, e))
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_OK
    except BrokenPipeError:
        return EXIT_ERROR
    finally:
        client.close()
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
