#!/usr/bin/env python3
"""The driver behind benches/soak.sh: wharf under mixed load for a long time, with faults.

Run it through soak.sh, which installs the tools, builds wharf, mounts the small file system for
wharf's data directory and owns the temporary directory. Everything listens on and connects to
127.0.0.1 only. Processes are started and stopped with bench.py's Server (own session, TERM then
KILL, ids appended to WORK/pids for soak.sh's cleanup).

  1. Content: images pushed straight into Debian's docker-registry over the Registry API (one
     POST and one monolithic PUT per blob, then the manifest), and a GOPROXY file tree of
     generated module versions served by `python3 -m http.server`. Every body's SHA-256 is known.
  2. A fault-injecting TCP proxy (this file, `proxy` subcommand) stands in front of both origins;
     wharf's upstreams point at it. Modes, switched at run time: normal, reset (connections are
     cut with a TCP reset part-way through the response), stall (no response bytes at all),
     slow (responses throttled), down (listeners closed, connections reset).
  3. Load: warm workers (paced, keep-alive) GET cached blobs, manifests by tag and by digest, Go
     .info/.mod/.zip and @v/list; cold workers walk through images never fetched before
     (manifest by tag, then each blob) and Go versions never fetched before. Every body is
     checked against its SHA-256: a complete 200 with other bytes is *corrupt*; a status other
     than 200, a body cut short or a failed connection is an *error* (with its kind).
  4. Faults on a schedule scaled to the run: upstream resets, upstream stall, slow upstream,
     origin down, data disk filled (and kept full) then freed, `kill -9` of wharf and a restart
     on the same data directory.
  5. Every --interval seconds: wharf's RSS, open descriptors, connections, data-directory and
     file-system use, request rate, p50/p99 latency, errors, corrupt bodies and X-Cache
     outcomes -> samples.csv; then gnuplot draws PNG charts with the fault windows shaded, and
     summary.md gets the tables.
"""

import argparse
import asyncio
import collections
import datetime
import hashlib
import http.client
import io
import json
import os
import random
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
import urllib.parse
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

MIB = 1024 * 1024
MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


# ---------------------------------------------------------------------------------------------
# The fault-injecting proxy (a process of its own: `soak.py proxy ...`)


class Proxy:
    """Relays TCP connections from each listen port to its target port on 127.0.0.1; the mode
    decides what happens to the responses (the target -> client direction)."""

    def __init__(self, routes, control_port, slow_rate):
        self.routes = routes  # [(listen_port, target_port)]
        self.control_port = control_port
        self.slow_rate = slow_rate
        self.mode = "normal"
        self.changed = asyncio.Event()
        self.servers = []
        self.conns = set()
        self.rng = random.Random(17)

    async def start_listeners(self):
        for listen, target in self.routes:
            server = await asyncio.start_server(
                lambda r, w, t=target: self.handle(r, w, t), "127.0.0.1", listen, reuse_address=True
            )
            self.servers.append(server)

    def close_listeners(self):
        for server in self.servers:
            server.close()
        self.servers = []

    def abort_all(self):
        for writers in list(self.conns):
            for w in writers:
                reset(w)
        self.conns.clear()

    async def set_mode(self, mode):
        if mode == self.mode:
            return
        old, self.mode = self.mode, mode
        if mode == "down":
            self.close_listeners()
            self.abort_all()
        elif old == "down":
            await self.start_listeners()
        self.changed.set()
        self.changed = asyncio.Event()

    async def handle(self, reader, writer, target):
        if self.mode == "down":
            reset(writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target)
        except OSError:
            reset(writer)
            return
        pair = (writer, up_writer)
        self.conns.add(pair)
        state = {"sent": 0, "cut": None}
        try:
            await asyncio.gather(
                self.pipe_up(reader, up_writer), self.pipe_down(up_reader, writer, state), return_exceptions=True
            )
        finally:
            self.conns.discard(pair)
            for w in pair:
                if not w.is_closing():
                    w.close()

    async def pipe_up(self, reader, writer):
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                writer.write(data)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
        except (OSError, RuntimeError):
            pass

    async def pipe_down(self, reader, writer, state):
        try:
            while True:
                data = await reader.read(16384)
                if not data:
                    break
                while self.mode == "stall":
                    await self.changed.wait()
                if self.mode == "down":
                    reset(writer)
                    return
                if self.mode == "reset":
                    if state["cut"] is None:
                        # Half of the connections are cut 1 byte .. 256 KiB further on.
                        state["cut"] = state["sent"] + self.rng.randint(1, 256 * 1024) if self.rng.random() < 0.5 else -1
                    if state["cut"] >= 0 and state["sent"] + len(data) >= state["cut"]:
                        writer.write(data[: max(0, state["cut"] - state["sent"])])
                        await writer.drain()
                        reset(writer)
                        return
                else:
                    state["cut"] = None
                writer.write(data)
                state["sent"] += len(data)
                await writer.drain()
                if self.mode == "slow":
                    await asyncio.sleep(len(data) / self.slow_rate)
            if writer.can_write_eof():
                writer.write_eof()
        except (OSError, RuntimeError):
            pass

    async def control(self, reader, writer):
        line = (await reader.readline()).decode().strip()
        if line in ("normal", "reset", "stall", "slow", "down"):
            await self.set_mode(line)
            writer.write(b"ok\n")
        else:
            writer.write(b"unknown mode\n")
        await writer.drain()
        writer.close()

    async def main(self):
        await self.start_listeners()
        ctl = await asyncio.start_server(self.control, "127.0.0.1", self.control_port, reuse_address=True)
        async with ctl:
            await ctl.serve_forever()


def reset(writer):
    """Closes with a TCP reset (SO_LINGER 0), as a crashed or cut-off peer would."""
    sock = writer.get_extra_info("socket")
    try:
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    writer.transport.abort()


def proxy_main(argv):
    ap = argparse.ArgumentParser(prog="soak.py proxy")
    ap.add_argument("--route", action="append", required=True, help="LISTEN:TARGET (ports on 127.0.0.1)")
    ap.add_argument("--control", type=int, required=True)
    ap.add_argument("--slow-rate", type=int, default=256 * 1024, help="bytes per second per connection in slow mode")
    args = ap.parse_args(argv)
    routes = [tuple(int(p) for p in r.split(":")) for r in args.route]
    asyncio.run(Proxy(routes, args.control, args.slow_rate).main())


def set_fault(control_port, mode):
    with socket.create_connection(("127.0.0.1", control_port), timeout=10) as s:
        s.sendall(mode.encode() + b"\n")
        answer = s.makefile().readline().strip()
    if answer != "ok":
        raise RuntimeError("fault proxy: %s: %s" % (mode, answer))


# ---------------------------------------------------------------------------------------------
# Content


def sha(data):
    return hashlib.sha256(data).hexdigest()


def blob_size(rng):
    """Most blobs small, a quarter medium, a few large enough to be cut or stalled mid-body."""
    x = rng.random()
    if x < 0.04:
        return rng.randint(4 * MIB, 12 * MIB)
    if x < 0.30:
        return rng.randint(256 * 1024, 2 * MIB)
    return int(2 ** rng.uniform(10, 18))


def push_blob(port, repo, data):
    d = "sha256:" + sha(data)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request("POST", "/v2/%s/blobs/uploads/" % repo, headers={"Content-Length": "0"})
        resp = conn.getresponse()
        resp.read()
        if resp.status != 202:
            raise RuntimeError("origin: POST upload for %s: %d" % (repo, resp.status))
        loc = urllib.parse.urlsplit(resp.getheader("Location"))
        path = loc.path + "?" + (loc.query + "&" if loc.query else "") + "digest=" + d
        conn.request("PUT", path, body=data, headers={"Content-Type": "application/octet-stream"})
        resp = conn.getresponse()
        resp.read()
        if resp.status != 201:
            raise RuntimeError("origin: PUT blob %s: %d" % (d, resp.status))
    finally:
        conn.close()
    return d


def push_manifest(port, repo, tag, body):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("PUT", "/v2/%s/manifests/%s" % (repo, tag), body=body, headers={"Content-Type": MT_MANIFEST})
        resp = conn.getresponse()
        text = resp.read()
        if resp.status != 201:
            raise RuntimeError("origin: PUT manifest %s:%s: %d %s" % (repo, tag, resp.status, text[:300]))
    finally:
        conn.close()


def make_images(origin_port, count, layers, seed):
    """`count` images soak/img-NNN:v1 of a config and `layers` layers each, pushed to the origin.
    Returns [{repo, tag, manifest: (hex, size), blobs: [(hex, size)]}]."""
    rng = random.Random(seed)
    images = []
    for i in range(count):
        repo = "soak/img-%03d" % i
        descs, blobs = [], []
        for n in range(layers):
            size = blob_size(rng)
            data = rng.randbytes(size)
            d = push_blob(origin_port, repo, data)
            descs.append({"mediaType": MT_LAYER, "digest": d, "size": size})
            blobs.append((d[7:], size))
        config = json.dumps(
            {"architecture": "amd64", "os": "linux", "config": {"Labels": {"soak": str(i)}},
             "rootfs": {"type": "layers", "diff_ids": [x["digest"] for x in descs]}}
        ).encode()
        cd = push_blob(origin_port, repo, config)
        blobs.insert(0, (cd[7:], len(config)))
        manifest = json.dumps(
            {"schemaVersion": 2, "mediaType": MT_MANIFEST,
             "config": {"mediaType": MT_CONFIG, "digest": cd, "size": len(config)}, "layers": descs},
            separators=(",", ":"),
        ).encode()
        push_manifest(origin_port, repo, "v1", manifest)
        images.append({"repo": repo, "tag": "v1", "manifest": (sha(manifest), len(manifest)), "blobs": blobs})
    return images


def make_go_tree(root, modules, versions, seed):
    """A GOPROXY tree: `modules` modules soak.example/mNNN with `versions` versions each.
    Returns [{module, version, files: {ext: (hex, size)}, list: (hex, size)}]."""
    rng = random.Random(seed)
    out = []
    for m in range(modules):
        module = "soak.example/m%03d" % m
        vdir = os.path.join(root, module, "@v")
        os.makedirs(vdir, exist_ok=True)
        names = ["v1.%d.0" % v for v in range(versions)]
        listing = ("\n".join(names) + "\n").encode()
        with open(os.path.join(vdir, "list"), "wb") as f:
            f.write(listing)
        for version in names:
            gomod = ("module %s\n\ngo 1.16\n" % module).encode()
            info = ('{"Version":"%s","Time":"2024-01-01T00:00:00Z"}\n' % version).encode()
            buf = io.BytesIO()
            prefix = "%s@%s/" % (module, version)
            with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
                for rel, data in [("go.mod", gomod), ("LICENSE", b"generated for the wharf soak test\n")] + [
                    ("f%02d.go" % n, b"package m\n\n// " + rng.randbytes(rng.randint(512, 24 * 1024)).hex().encode() + b"\n")
                    for n in range(rng.randint(2, 6))
                ]:
                    zi = zipfile.ZipInfo(prefix + rel, date_time=(1980, 1, 1, 0, 0, 0))
                    zi.compress_type = zipfile.ZIP_DEFLATED
                    z.writestr(zi, data)
            files = {}
            for ext, data in (("info", info), ("mod", gomod), ("zip", buf.getvalue())):
                with open(os.path.join(vdir, version + "." + ext), "wb") as f:
                    f.write(data)
                files[ext] = (sha(data), len(data))
            out.append({"module": module, "version": version, "files": files, "list": (sha(listing), len(listing))})
    return out


# ---------------------------------------------------------------------------------------------
# Load


class Stats:
    """Every finished request: (end time, latency s, kind, result, X-Cache). result is "ok",
    "corrupt" or an error kind."""

    def __init__(self, t0):
        self.t0 = t0
        self.lock = threading.Lock()
        self.pending = []
        self.all = []
        self.corrupt_details = []

    def add(self, latency, kind, result, outcome):
        rec = (time.monotonic() - self.t0, latency, kind, result, outcome)
        with self.lock:
            self.pending.append(rec)

    def take(self):
        with self.lock:
            recs, self.pending = self.pending, []
        self.all.extend(recs)
        return recs


class Client:
    """One keep-alive HTTP/1.1 connection to wharf. A request that fails on a reused connection
    before any response byte is sent again once on a new connection, as clients do when a
    server closed an idle keep-alive connection."""

    def __init__(self, port, timeout):
        self.port = port
        self.timeout = timeout
        self.conn = None

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def get(self, path, headers):
        for attempt in (0, 1):
            reused = self.conn is not None
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
            try:
                self.conn.request("GET", path, headers=headers)
                resp = self.conn.getresponse()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self.close()
                if reused and attempt == 0:
                    continue
                raise
            except BaseException:
                self.close()
                raise
            try:
                body = resp.read()
            except BaseException as exc:
                self.close()
                raise BodyCut(exc) from exc
            if resp.will_close:
                self.close()
            return resp, body
        raise AssertionError("unreachable")


class BodyCut(Exception):
    pass


def classify(exc):
    if isinstance(exc, BodyCut):
        inner = exc.args[0]
        return "timeout" if isinstance(inner, socket.timeout) else "cut body"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, socket.timeout):
        return "timeout"
    if isinstance(exc, (ConnectionResetError, http.client.RemoteDisconnected, BrokenPipeError)):
        return "reset"
    return type(exc).__name__


class Load:
    """The workers, and what they may ask for: warm (fetched fine before) and cold (never asked)."""

    def __init__(self, args, stats, images, go_versions, warm_images, warm_go):
        self.args = args
        self.stats = stats
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.rng = random.Random(99)
        # Warm sets: what has been fetched completely at least once.
        self.warm_blobs = []  # (repo, hex, size)
        self.warm_images = []
        self.warm_go = []
        # Cold queues, consumed in order; a failed cold item is retried (after a pause).
        self.cold_images = collections.deque(images[warm_images:])
        self.cold_blobs = collections.deque()
        self.cold_go = collections.deque(go_versions[warm_go:])
        self.retry = collections.deque()
        self.prewarm_images = images[:warm_images]
        self.prewarm_go = go_versions[:warm_go]
        self.cold_left_over = False
        self.threads = []

    # --- requests ---

    def request(self, client, kind, path, want, accept=None):
        headers = {"Accept": accept} if accept else {}
        t = time.monotonic()
        outcome = ""
        try:
            resp, body = client.get(path, headers)
            outcome = resp.getheader("X-Cache") or "-"
            if resp.status != 200:
                result = "http %d" % resp.status
            elif sha(body) != want[0]:
                result = "corrupt"
                with self.lock:
                    if len(self.stats.corrupt_details) < 20:
                        self.stats.corrupt_details.append(
                            {"path": path, "got_len": len(body), "want_len": want[1], "got_sha256": sha(body),
                             "want_sha256": want[0], "x_cache": outcome, "headers": dict(resp.getheaders())}
                        )
            else:
                result = "ok"
        except Exception as exc:  # every failure is counted, never raised
            result = classify(exc)
        self.stats.add(time.monotonic() - t, kind, result, outcome)
        return result == "ok"

    def blob(self, client, kind, repo, hexd, size):
        return self.request(client, kind, "/v2/%s/blobs/sha256:%s" % (repo, hexd), (hexd, size))

    def manifest(self, client, kind, image, by_digest):
        ref = "sha256:" + image["manifest"][0] if by_digest else image["tag"]
        return self.request(client, kind, "/v2/%s/manifests/%s" % (image["repo"], ref), image["manifest"], MANIFEST_ACCEPT)

    def go(self, client, kind, v, ext):
        if ext == "list":
            return self.request(client, kind, "/go/%s/@v/list" % v["module"], v["list"])
        return self.request(client, kind, "/go/%s/@v/%s.%s" % (v["module"], v["version"], ext), v["files"][ext])

    # --- warm up (before the clock starts; not counted) ---

    def prewarm(self):
        client = Client(self.args.port, self.args.client_timeout)
        scratch = Stats(time.monotonic())
        real, self.stats = self.stats, scratch
        try:
            for image in self.prewarm_images:
                if not self.manifest(client, "prewarm", image, False):
                    raise RuntimeError("prewarm: manifest %s failed: %s" % (image["repo"], scratch.pending[-1]))
                for hexd, size in image["blobs"]:
                    if not self.blob(client, "prewarm", image["repo"], hexd, size):
                        raise RuntimeError("prewarm: blob %s failed: %s" % (hexd, scratch.pending[-1]))
                    self.warm_blobs.append((image["repo"], hexd, size))
                self.warm_images.append(image)
            for v in self.prewarm_go:
                for ext in ("list", "info", "mod", "zip"):
                    if not self.go(client, "prewarm", v, ext):
                        raise RuntimeError("prewarm: go %s@%s .%s failed: %s" % (v["module"], v["version"], ext, scratch.pending[-1]))
                self.warm_go.append(v)
        finally:
            self.stats = real
            client.close()

    # --- workers ---

    def start(self):
        # Mutable keys (tags, @v/list) have workers of their own: while a revalidation waits for
        # a failing upstream, the hits of the other workers keep flowing (and show that they do).
        total = sum(w for _, w in self.IMMUTABLE + self.MUTABLE)
        n_mut = max(1, self.args.warm_workers // 3)
        n_imm = max(1, self.args.warm_workers - n_mut)
        for group, n, mix in (("warm", n_imm, self.IMMUTABLE), ("warm-tags", n_mut, self.MUTABLE)):
            share = sum(w for _, w in mix) / total
            for i in range(n):
                self.spawn("%s-%d" % (group, i), lambda c, r, m=mix: self.warm_worker(c, r, m), self.args.rate * share / n)
        if self.args.warm_only:
            return
        for i in range(self.args.cold_workers):
            self.spawn("cold-%d" % i, self.cold_worker, self.args.cold_rate / self.args.cold_workers)
        self.spawn("cold-go", self.cold_go_worker, self.args.cold_go_rate)

    def spawn(self, name, fn, rate):
        t = threading.Thread(target=self.paced, args=(fn, rate), name=name, daemon=True)
        t.start()
        self.threads.append(t)

    def paced(self, fn, rate):
        client = Client(self.args.port, self.args.client_timeout)
        rng = random.Random(hash(threading.current_thread().name))
        interval = 1.0 / rate
        next_at = time.monotonic() + rng.random() * interval
        while not self.stop.is_set():
            delay = next_at - time.monotonic()
            if delay > 0:
                self.stop.wait(delay)
                if self.stop.is_set():
                    break
            elif delay < -1.0:
                next_at = time.monotonic()  # fell behind (slow answers): no burst to catch up
            next_at += interval
            fn(client, rng)
        client.close()

    IMMUTABLE = [("blob", 40), ("manifest digest", 10), ("go zip", 10), ("go mod", 10), ("go info", 5)]
    MUTABLE = [("manifest tag", 15), ("go list", 5)]

    def warm_worker(self, client, rng, mix):
        kind = rng.choices([k for k, _ in mix], [w for _, w in mix])[0]
        with self.lock:
            if kind == "blob":
                item = rng.choice(self.warm_blobs)
            elif kind.startswith("manifest"):
                item = rng.choice(self.warm_images)
            else:
                item = rng.choice(self.warm_go)
        if kind == "blob":
            self.blob(client, "warm blob", *item)
        elif kind.startswith("manifest"):
            self.manifest(client, "warm " + kind, item, kind.endswith("digest"))
        else:
            self.go(client, "warm " + kind, item, kind.split()[1])

    def next_cold(self):
        """The next cold registry item: a retry whose pause is over, else the next blob of the
        image being pulled, else the next image's manifest."""
        with self.lock:
            if self.retry and self.retry[0][0] <= time.monotonic():
                return self.retry.popleft()[1]
            if self.cold_blobs:
                return self.cold_blobs.popleft()
            if self.cold_images:
                return ("manifest", self.cold_images.popleft())
        self.cold_left_over = True
        return None

    def cold_worker(self, client, _rng):
        item = self.next_cold()
        if item is None:
            return
        if item[0] == "manifest":
            image = item[1]
            ok = self.manifest(client, "cold manifest", image, False)
            with self.lock:
                if ok:
                    self.warm_images.append(image)
                    self.cold_blobs.extend(("blob", image["repo"], h, s) for h, s in image["blobs"])
                else:
                    self.retry.append((time.monotonic() + 2, item))
            return
        _, repo, hexd, size = item
        ok = self.blob(client, "cold blob", repo, hexd, size)
        with self.lock:
            if ok:
                self.warm_blobs.append((repo, hexd, size))
            else:
                self.retry.append((time.monotonic() + 2, item))

    def cold_go_worker(self, client, _rng):
        with self.lock:
            v = self.cold_go.popleft() if self.cold_go else None
        if v is None:
            self.cold_left_over = True
            return
        ok = all([self.go(client, "cold go " + ext, v, ext) for ext in ("info", "mod", "zip")])
        with self.lock:
            if ok:
                self.warm_go.append(v)
            else:
                self.cold_go.append(v)  # again later

    def finish(self):
        self.stop.set()
        for t in self.threads:
            t.join(timeout=self.args.client_timeout + 5)


MANIFEST_ACCEPT = (
    "application/vnd.oci.image.manifest.v1+json, "
    "application/vnd.oci.image.index.v1+json, "
    "application/vnd.docker.distribution.manifest.v2+json, "
    "application/vnd.docker.distribution.manifest.list.v2+json"
)


# ---------------------------------------------------------------------------------------------
# wharf, the sampler and the faults


class Wharf:
    def __init__(self, args, bench, config, log_path):
        self.args = args
        self.bench = bench
        self.config = config
        self.log_path = log_path
        self.server = None
        self.lock = threading.Lock()
        self.restarts = 0
        self.cpu_before = 0.0  # CPU seconds of processes killed earlier

    def start(self):
        server = self.bench.Server("wharf", [self.args.wharf, "serve", "--config", self.config], self.log_path)
        server.start(self.args.port, None, timeout=120)
        with self.lock:
            self.server = server

    def pid(self):
        with self.lock:
            return self.server.proc.pid if self.server and self.server.proc.poll() is None else None

    def kill9(self):
        with self.lock:
            server, self.server = self.server, None
        self.cpu_before += server.cpu_seconds()
        os.kill(server.proc.pid, 9)
        server.proc.wait()
        if server in self.bench.RUNNING:
            self.bench.RUNNING.remove(server)

    def restart(self):
        self.restarts += 1
        self.start()

    def cpu_seconds(self):
        with self.lock:
            server = self.server
        return self.cpu_before + (server.cpu_seconds() if server else 0.0)

    def stop(self):
        with self.lock:
            server = self.server
        if server:
            server.stop()


def proc_rss_mib(pid):
    """VmRSS, RssAnon (heap: what a leak would grow) and RssFile, in MiB."""
    found = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            key = line.split(":", 1)[0]
            if key in ("VmRSS", "RssAnon", "RssFile"):
                found[key] = int(line.split()[1]) / 1024
    return found.get("VmRSS"), found.get("RssAnon"), found.get("RssFile")


def proc_fds(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


def tree_bytes(path):
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
            except OSError:
                pass
    return total


def scrape(port, names):
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
        conn.close()
    except Exception:
        return {}
    found = {}
    for line in text.splitlines():
        for name in names:
            if line.startswith(name + " ") or line.startswith(name + "{"):
                try:
                    found[name] = found.get(name, 0) + float(line.rsplit(" ", 1)[1])
                except ValueError:
                    pass
    return found


def percentile(sorted_values, q):
    if not sorted_values:
        return None
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


class Faults:
    """The schedule, run in a thread of its own: [(start s, duration s, name, label)]."""

    def __init__(self, args, wharf, disk_dir, t0, total):
        self.args = args
        self.wharf = wharf
        self.disk_dir = disk_dir
        self.t0 = t0
        self.done = []  # (start, end, name, label, note)
        self.stop = threading.Event()
        self.error = None
        d = min(90.0, max(20.0, total / 20))
        down = min(60.0, max(20.0, total / 10))
        plan = [
            (0.08, d, "reset", "upstream resets"),
            (0.20, d, "stall", "upstream stall"),
            (0.32, d, "slow", "slow upstream"),
            (0.44, down, "down", "origin down"),
            (0.58, 1.5 * d, "disk", "disk full"),
            (0.74, 0.0, "kill", "kill -9"),
        ]
        if disk_dir is None:
            plan = [p for p in plan if p[2] != "disk"]
        if args.no_faults:
            plan = []
        self.plan = [(round(total * f), dur, name, label) for f, dur, name, label in plan]

    def now(self):
        return time.monotonic() - self.t0

    def wait_until(self, t):
        while not self.stop.is_set() and self.now() < t:
            self.stop.wait(min(0.5, max(0.0, t - self.now())))
        return not self.stop.is_set()

    def run(self):
        try:
            for start, dur, name, label in self.plan:
                if not self.wait_until(start):
                    return
                t_start = self.now()
                bench_log("fault: %s" % label)
                note = getattr(self, "do_" + name)(t_start + dur)
                t_end = self.now()
                self.done.append((t_start, t_end, name, label, note or ""))
                bench_log("fault over: %s (%.0f s)%s" % (label, t_end - t_start, "; " + note if note else ""))
        except Exception as exc:
            bench_log("fault thread failed: %r" % exc)
            self.error = exc
            raise

    def proxy_window(self, mode, until):
        set_fault(self.args.control_port, mode)
        try:
            self.wait_until(until)
        finally:
            set_fault(self.args.control_port, "normal")

    def do_reset(self, until):
        self.proxy_window("reset", until)

    def do_stall(self, until):
        self.proxy_window("stall", until)

    def do_slow(self, until):
        self.proxy_window("slow", until)

    def do_down(self, until):
        self.proxy_window("down", until)

    def do_disk(self, until):
        """Fills the data directory's file system to `disk_leave` bytes free, and keeps it there
        (wharf evicts to make room; the filler grows back) until `until`, then deletes the filler."""
        filler = os.path.join(self.disk_dir, "filler")
        leave = self.args.disk_leave_mib * MIB
        peak = 0
        fd = os.open(filler, os.O_CREAT | os.O_WRONLY, 0o600)
        try:
            while True:
                st = os.statvfs(self.disk_dir)
                free = st.f_bavail * st.f_frsize
                if free > leave + MIB:
                    size = os.fstat(fd).st_size + free - leave
                    try:
                        os.posix_fallocate(fd, 0, size)
                    except OSError:
                        pass
                    peak = max(peak, os.fstat(fd).st_size)
                if self.stop.is_set() or self.now() >= until:
                    break
                self.stop.wait(1.0)
        finally:
            os.close(fd)
            os.unlink(filler)
        return "filler up to %d MiB, %d MiB left free" % (peak // MIB, self.args.disk_leave_mib)

    def do_kill(self, _until):
        t = self.now()
        self.wharf.kill9()
        self.stop.wait(self.args.restart_after)
        self.wharf.restart()
        return "restarted on the same data directory after %.1f s" % (self.now() - t)


def bench_log(msg):
    print("[%s] %s" % (time.strftime("%H:%M:%S"), msg), file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Charts and summary


CSV_FIELDS = [
    "t", "rss_mib", "rss_anon_mib", "rss_file_mib", "index_mib", "fds", "conns", "data_mib", "fs_used_mib", "reqs", "rps", "p50_ms", "p99_ms",
    "errors", "corrupt", "hit", "miss", "stale", "bypass", "other", "cpu_pct",
]


def write_charts(out, samples, faults, fs_size_mib, min_free_mib):
    """gnuplot, one PNG per quantity, fault windows shaded and labelled."""
    dat = os.path.join(out, "samples.csv")
    colors = {"reset": "#f4a582", "stall": "#fddbc7", "slow": "#d1e5f0", "down": "#92c5de",
              "disk": "#e0d0f0", "kill": "#ca0020"}
    shading = []
    for i, (start, end, name, label, _note) in enumerate(faults):
        x0, x1 = start / 60, max(end, start + 2) / 60
        shading.append(
            'set object %d rect from %f, graph 0 to %f, graph 1 fc rgb "%s" fs solid 0.55 noborder behind'
            % (i + 1, x0, x1, colors.get(name, "#dddddd"))
        )
        shading.append('set label %d "%s" at %f, graph 1.0 left offset 0,0.6 font ",8" textcolor rgb "#333333"'
                       % (i + 1, label, x0))
    t_max = samples[-1]["t"] / 60 if samples else 1
    head = [
        'set terminal pngcairo size 1000,320 font "DejaVu Sans,9"',
        "set datafile separator ','",
        "set key below horizontal font ',8'",
        "set grid ytics lc rgb '#e0e0e0'",
        "set xrange [0:%f]" % t_max,
        "set xlabel 'minutes'",
        "set tmargin 2.2",
        "set lmargin 10",
        "set rmargin 3",
    ] + shading
    col = {f: i + 1 for i, f in enumerate(CSV_FIELDS)}

    def u(field, scale=""):
        return "u ($1/60):(column(%d)%s)" % (col[field], scale)

    charts = [
        ("rss.png", "wharf resident memory, and the size of its index (sled) on disk", "MiB", "set yrange [0:*]",
         ["'%s' %s w l lw 1.5 lc rgb '#1f78b4' t 'VmRSS'" % (dat, u("rss_mib")),
          "'%s' %s w l lw 1 lc rgb '#a6cee3' t 'RssAnon (heap)'" % (dat, u("rss_anon_mib")),
          "'%s' %s w l lw 1 dt 2 lc rgb '#999999' t 'index/ on disk'" % (dat, u("index_mib"))]),
        ("fds.png", "wharf open file descriptors and client connections", "count", "set yrange [0:*]",
         ["'%s' %s w l lw 1.5 lc rgb '#33a02c' t 'open descriptors'" % (dat, u("fds")),
          "'%s' %s w l lw 1 lc rgb '#b2df8a' t 'connections open (/metrics)'" % (dat, u("conns"))]),
        ("disk.png", "disk: the data directory and its file system (%d MiB; min_free %d MiB)" % (fs_size_mib, min_free_mib),
         "MiB", "set yrange [0:%f]" % (fs_size_mib * 1.05),
         ["'%s' %s w l lw 1.5 lc rgb '#6a3d9a' t 'file system used'" % (dat, u("fs_used_mib")),
          "'%s' %s w l lw 1.5 lc rgb '#cab2d6' t 'wharf data directory'" % (dat, u("data_mib")),
          "%f w l dt 2 lc rgb '#e31a1c' t 'size - min\\_free'" % (fs_size_mib - min_free_mib)]),
        ("rate.png", "requests per second (completed, all kinds) and wharf CPU", "req/s", "set yrange [0:*]\nset y2tics\nset y2label 'CPU %'\nset y2range [0:*]",
         ["'%s' %s w l lw 1.5 lc rgb '#1f78b4' t 'req/s'" % (dat, u("rps")),
          "'%s' %s axes x1y2 w l lw 1 lc rgb '#fdbf6f' t 'wharf CPU %% (of one core)'" % (dat, u("cpu_pct"))]),
        ("latency.png", "latency per interval (all requests; log scale)", "ms", "set logscale y\nset yrange [0.1:*]",
         ["'%s' %s w l lw 1.5 lc rgb '#1f78b4' t 'p50'" % (dat, u("p50_ms")),
          "'%s' %s w l lw 1.5 lc rgb '#e31a1c' t 'p99'" % (dat, u("p99_ms"))]),
        ("outcomes.png", "answers per interval by X-Cache (log scale)", "responses", "set logscale y\nset yrange [0.8:*]",
         ["'%s' %s w l lw 1.2 lc rgb '#1f78b4' t 'HIT'" % (dat, u("hit")),
          "'%s' %s w l lw 1.2 lc rgb '#33a02c' t 'MISS'" % (dat, u("miss")),
          "'%s' %s w l lw 1.5 lc rgb '#ff7f00' t 'STALE'" % (dat, u("stale")),
          "'%s' %s w l lw 1.5 lc rgb '#6a3d9a' t 'BYPASS'" % (dat, u("bypass"))]),
        errors_chart(dat, col, samples),
    ]
    script = list(head)
    for png, title, ylabel, extra, plots in charts:
        script += [
            "set output '%s'" % os.path.join(out, png),
            "set title \"%s\" offset 0,0.9" % title,
            "set ylabel '%s'" % ylabel,
            "unset logscale y", "unset y2tics", "unset y2label", "set ytics nomirror",
            extra,
            "plot " + ", ".join(plots),
        ]
    path = os.path.join(out, "charts.gp")
    with open(path, "w") as f:
        f.write("\n".join(script) + "\n")
    proc = subprocess.run(["gnuplot", path], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise RuntimeError("gnuplot failed:\n%s" % proc.stdout.decode()[-3000:])
    return [c[0] for c in charts]


def errors_chart(dat, col, samples):
    """Errors per interval, on a log scale when a spike (a kill -9) would hide the rest."""
    corrupt = sum(r["corrupt"] or 0 for r in samples)
    if max([r["errors"] or 0 for r in samples] + [0]) > 20:
        title, extra, cond = "failed requests and corrupt bodies per interval (log scale)", "set logscale y\nset yrange [0.8:*]", "> 0"
    else:
        title, extra, cond = "failed requests and corrupt bodies per interval", "set yrange [0:*]", ">= 0"
    plots = [
        "'%s' u ($1/60):(column(%d) %s ? column(%d) : 1/0) w impulses lw 3 lc rgb '#e31a1c' t 'errors (status, cut body, connection)'"
        % (dat, col["errors"], cond, col["errors"]),
        "'%s' u ($1/60):(column(%d) %s ? column(%d) : 1/0) w p pt 7 ps 1 lc rgb '#000000' t 'corrupt bodies (%d in the run)'"
        % (dat, col["corrupt"], cond if corrupt else "> 0", col["corrupt"], corrupt),
    ]
    if corrupt == 0 and cond == "> 0":
        plots[1] = "NaN w p pt 7 ps 1 lc rgb '#000000' t 'corrupt bodies (0 in the run)'"
    return ("errors.png", title, "requests", extra, plots)


def fmt_ms(v):
    if v is None:
        return "-"
    return "%.1f" % v if v >= 10 else "%.2f" % v


def summarize(args, stats, samples, faults, wharf, load, started_wall, fs_size_mib, charts):
    recs = stats.all
    results = collections.Counter(r[3] for r in recs)
    kinds = collections.Counter(r[2] for r in recs)
    kind_errors = collections.Counter(r[2] for r in recs if r[3] not in ("ok", "corrupt"))
    outcomes = collections.Counter(r[4] or "(no answer)" for r in recs)
    errors = sum(n for k, n in results.items() if k not in ("ok", "corrupt"))
    rss = [s["rss_mib"] for s in samples if s["rss_mib"] != ""]
    fds = [s["fds"] for s in samples if s["fds"] != ""]
    conns = [s["conns"] for s in samples if s["conns"] != ""]
    # After the first fault-free stretch (the baseline), steady = outside faults and 30 s after them.
    first = faults[0][0] if faults else 1e9
    base = [s for s in samples if 10 <= s["t"] < first and s["p99_ms"] != ""]
    base_p50 = statistics.median(s["p50_ms"] for s in base) if base else None
    base_p99 = statistics.median(s["p99_ms"] for s in base) if base else None
    grace = 30

    def window(t):
        for start, end, name, label, _ in faults:
            if start <= t <= end + grace:
                return label
        return None

    outside = [r for r in recs if window(r[0]) is None]
    outside_err = collections.Counter(r[3] for r in outside if r[3] not in ("ok", "corrupt"))
    kills = [start for start, _e, name, _l, _n in faults if name == "kill"]
    split = kills[0] if kills else samples[-1]["t"] / 2
    rss_a = [s["rss_mib"] for s in samples if s["rss_mib"] != "" and s["t"] < split]
    rss_b = [s["rss_mib"] for s in samples if s["rss_mib"] != "" and s["t"] > split]
    index = [s["index_mib"] for s in samples if s["index_mib"] != ""]

    lines = []
    now = datetime.datetime.now(datetime.timezone.utc)
    minutes = (samples[-1]["t"] if samples else 0) / 60
    lines.append("%s, %s. Command: `%s`. wharf %s; %.1f minutes of load after a warm-up; samples every %g s; "
                 "%d warm workers (a third of them on tags and @v/list only) paced at %g req/s in all, %d cold registry workers at %g items/s, one cold Go worker at %g versions/s; "
                 "data directory on a %d MiB tmpfs%s."
                 % (started_wall.strftime("%Y-%m-%d %H:%M UTC"), bench_machine(), args.command, args.wharf_version,
                    minutes, args.interval, args.warm_workers, args.rate, args.cold_workers, args.cold_rate,
                    args.cold_go_rate, fs_size_mib, "" if args.disk_dir else " (not mounted: the disk fault was skipped)"))
    lines.append("")
    lines.append("| | |")
    lines.append("|---|---|")
    injected = ", ".join("%s (%.0f s at %.1f min)" % (lab, e - s, s / 60) for s, e, _n, lab, _ in faults)
    lines.append("| faults injected | %s |" % (injected or "none"))
    lines.append("| requests | %s (%s verified bodies) |" % (f"{len(recs):,}", f"{results['ok']:,}"))
    lines.append("| errors | %s (%.2f%%): %s |" % (
        f"{errors:,}", 100.0 * errors / max(1, len(recs)),
        ", ".join("%s %s" % (k, f"{n:,}") for k, n in results.most_common() if k not in ("ok", "corrupt")) or "none"))
    lines.append("| errors outside fault windows (and %d s after each) | %s |" % (
        grace, ", ".join("%s %d" % kv for kv in outside_err.most_common()) or "0"))
    lines.append("| **corrupt bodies** | **%d** |" % results["corrupt"])
    lines.append("| X-Cache of the answers | %s |" % ", ".join("%s %s" % (k, f"{n:,}") for k, n in outcomes.most_common()))
    if rss:
        lines.append("| wharf RSS (MiB) | %.1f – %.1f (%s: %.1f – %.1f; %s: %.1f – %.1f) |" % (
            min(rss), max(rss), "before the kill -9" if kills else "first half", min(rss_a or [0]), max(rss_a or [0]),
            "after the restart" if kills else "second half", min(rss_b or [0]), max(rss_b or [0])))
    if index:
        lines.append("| wharf index (sled) on disk (MiB) | %.1f – %.1f |" % (min(index), max(index)))
    if fds:
        lines.append("| wharf open descriptors | %d – %d |" % (min(fds), max(fds)))
    if conns:
        lines.append("| client connections open | %d – %d |" % (min(conns), max(conns)))
    lines.append("| wharf CPU | %.0f s over the run (of 2 × %.0f s available) |" % (wharf.cpu_seconds(), minutes * 60))
    if base_p50 is not None:
        lines.append("| latency before the first fault (median of %g s intervals) | p50 %s ms, p99 %s ms |" % (
            args.interval, fmt_ms(base_p50), fmt_ms(base_p99)))
    lines.append("| cold content left at the end | %s |" % ("none: the pools ran dry (raise the pool factor)" if load.cold_left_over else "yes (cold requests throughout)"))
    lines.append("")
    lines.append("Per fault (requests that ended inside the window; recovered: the first interval after the window with no error and p99 within 3× the baseline):")
    lines.append("")
    lines.append("| fault | at (min) | lasted (s) | requests | errors | error kinds | X-Cache STALE / BYPASS | p99 in window (ms) | recovered after (s) |")
    lines.append("|---|---:|---:|---:|---:|---|---:|---:|---:|")
    for start, end, name, label, note in faults:
        inside = [r for r in recs if start <= r[0] <= end]
        errs = collections.Counter(r[3] for r in inside if r[3] not in ("ok", "corrupt"))
        lat = sorted(r[1] * 1000 for r in inside)
        stale = sum(1 for r in inside if r[4] == "STALE")
        bypass = sum(1 for r in inside if r[4] == "BYPASS")
        recovered = "-"
        if base_p99 is not None:
            for s in samples:
                if s["t"] - args.interval < end:
                    continue
                if s["errors"] == 0 and s["p99_ms"] != "" and s["p99_ms"] <= 3 * base_p99:
                    recovered = "%.0f" % max(0, s["t"] - end)
                    break
            else:
                recovered = "never"
        lines.append("| %s%s | %.1f | %.0f | %s | %d | %s | %d / %d | %s | %s |" % (
            label, " (%s)" % note if note else "", start / 60, end - start, f"{len(inside):,}", sum(errs.values()),
            ", ".join("%s %d" % kv for kv in errs.most_common()) or "-", stale, bypass,
            fmt_ms(percentile(lat, 0.99)), recovered))
    lines.append("")
    lines.append("Requests by kind:")
    lines.append("")
    lines.append("| kind | requests | errors |")
    lines.append("|---|---:|---:|")
    for kind, n in sorted(kinds.items()):
        lines.append("| %s | %s | %d |" % (kind, f"{n:,}", kind_errors[kind]))
    lines.append("")
    lines.append("Charts: " + ", ".join("[%s](%s)" % (c[:-4], c) for c in charts))
    if stats.corrupt_details:
        lines.append("")
        lines.append("Corrupt bodies (first %d):" % len(stats.corrupt_details))
        for d in stats.corrupt_details:
            lines.append("- `%s`" % json.dumps(d))
    return "\n".join(lines) + "\n"


def bench_machine():
    import bench
    return bench.machine()


# ---------------------------------------------------------------------------------------------
# Main


def redraw_main(argv):
    """`soak.py charts DIR`: draws the charts again from DIR/samples.csv and DIR/faults.json."""
    ap = argparse.ArgumentParser(prog="soak.py charts")
    ap.add_argument("dir")
    ap.add_argument("--fs-mib", type=int, default=1024)
    ap.add_argument("--min-free-mib", type=int, default=64)
    args = ap.parse_args(argv)
    samples = []
    with open(os.path.join(args.dir, "samples.csv")) as f:
        fields = f.readline().lstrip("#").strip().split(",")
        for line in f:
            row = {}
            for k, v in zip(fields, line.strip().split(",")):
                row[k] = float(v) if v else ""
            samples.append(row)
    with open(os.path.join(args.dir, "faults.json")) as f:
        faults = [(x["start"], x["end"], x["fault"], x["label"], x["note"]) for x in json.load(f)]
    write_charts(args.dir, samples, faults, args.fs_mib, args.min_free_mib)


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "proxy":
        return proxy_main(sys.argv[2:])
    if len(sys.argv) > 1 and sys.argv[1] == "charts":
        return redraw_main(sys.argv[2:])
    import bench

    ap = argparse.ArgumentParser()
    ap.add_argument("--work", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--wharf", required=True)
    ap.add_argument("--wharf-version", default="?")
    ap.add_argument("--command", default="benches/soak.sh")
    ap.add_argument("--minutes", type=float, default=30)
    ap.add_argument("--interval", type=float, default=2.0, help="seconds between samples")
    ap.add_argument("--disk-dir", default="", help="a mounted file system for the data directory (the disk fault); empty: skip it")
    ap.add_argument("--disk-leave-mib", type=int, default=8, help="free space the disk fault leaves")
    ap.add_argument("--min-free-mib", type=int, default=64)
    ap.add_argument("--rate", type=float, default=150, help="warm requests per second, all warm workers together")
    ap.add_argument("--warm-workers", type=int, default=6)
    ap.add_argument("--cold-rate", type=float, default=1.0, help="cold registry items (manifests, blobs) per second")
    ap.add_argument("--cold-workers", type=int, default=2)
    ap.add_argument("--cold-go-rate", type=float, default=0.5, help="cold Go versions (.info, .mod, .zip) per second")
    ap.add_argument("--client-timeout", type=float, default=60)
    ap.add_argument("--restart-after", type=float, default=2.0, help="seconds between the kill -9 and the restart")
    ap.add_argument("--slow-rate-kib", type=int, default=256, help="slow upstream: KiB/s per connection")
    ap.add_argument("--log-level", default="info")
    ap.add_argument("--no-faults", action="store_true", help="load only (a baseline to compare with)")
    ap.add_argument("--warm-only", action="store_true", help="no cold content after the warm-up")
    ap.add_argument("--registry", default="docker-registry")
    args = ap.parse_args()
    bench.ARGS = args  # bench.Server and bench.Origin read ARGS.work and ARGS.registry
    args.registry = bench.shutil.which(args.registry) or sys.exit("soak.py: docker-registry not found")
    if not bench.shutil.which("gnuplot"):
        sys.exit("soak.py: gnuplot not found")
    os.makedirs(args.out, exist_ok=True)
    bench.signal.signal(bench.signal.SIGTERM, bench.on_signal)
    bench.signal.signal(bench.signal.SIGHUP, bench.on_signal)
    try:
        return soak(args, bench)
    finally:
        bench.stop_all()


def soak(args, bench):
    total = args.minutes * 60
    started_wall = datetime.datetime.now(datetime.timezone.utc)
    warm_images, layers = 8, 6
    pool = 1.3  # cold content for 1.3x the run, so it never runs dry
    cold_images = int(args.cold_rate * total * pool / (layers + 2)) + 2
    versions_per_module = 5
    warm_go = 20
    go_modules = int((args.cold_go_rate * total * pool + warm_go) / versions_per_module) + 1

    bench.log("origin: docker-registry; pushing %d images of %d blobs each" % (warm_images + cold_images, layers + 1))
    origin = bench.Origin()
    images = make_images(origin.port, warm_images + cold_images, layers, seed=1)
    pushed = sum(s for im in images for _h, s in im["blobs"])
    bench.log("origin: %d blobs, %.0f MiB" % (sum(len(im["blobs"]) for im in images), pushed / MIB))

    go_root = os.path.join(args.work, "gotree")
    go_versions = make_go_tree(go_root, go_modules, versions_per_module, seed=2)
    bench.log("go origin: %d modules x %d versions" % (go_modules, versions_per_module))
    go_port = bench.free_port()
    bench.Server("go origin", [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "--directory", go_root, str(go_port)],
                 os.path.join(args.work, "goorigin.log")).start(go_port, None)

    reg_proxy, go_proxy, args.control_port = bench.free_port(), bench.free_port(), bench.free_port()
    bench.Server("fault proxy", [sys.executable, os.path.abspath(__file__), "proxy",
                                 "--route", "%d:%d" % (reg_proxy, origin.port), "--route", "%d:%d" % (go_proxy, go_port),
                                 "--control", str(args.control_port), "--slow-rate", str(args.slow_rate_kib * 1024)],
                 os.path.join(args.work, "proxy.log")).start(args.control_port, None)

    # wharf: the data directory on the small file system when there is one.
    args.port = bench.free_port()
    base = args.disk_dir or os.path.join(args.work, "disk")
    data_dir = os.path.join(base, "data")
    os.makedirs(data_dir, exist_ok=True)
    st = os.statvfs(base)
    fs_size_mib = st.f_blocks * st.f_frsize // MIB
    config = os.path.join(args.work, "wharf.toml")
    with open(config, "w") as f:
        f.write(
            'listen = "127.0.0.1:%d"\ndata_dir = "%s"\n'
            '[log]\nlevel = "%s"\n'
            '[registry]\ndefault_upstream = "origin"\ntag_ttl = "30s"\n'
            '[[registry.upstream]]\nname = "origin"\nurl = "http://127.0.0.1:%d"\n'
            '[go]\nupstreams = ["http://127.0.0.1:%d"]\nverify = false\nlist_ttl = "30s"\n'
            '[egress]\nallow = ["127.0.0.1"]\nconnect_timeout = "5s"\nread_timeout = "10s"\n'
            'failure_threshold = 3\nprobe_interval = "5s"\n'
            '[cache]\nmin_free = "%dMiB"\ngc_interval = "15s"\n'
            % (args.port, data_dir, args.log_level, reg_proxy, go_proxy, args.min_free_mib)
        )
    wharf = Wharf(args, bench, config, os.path.join(args.work, "wharf.log"))
    wharf.start()

    stats = Stats(time.monotonic())
    load = Load(args, stats, images, go_versions, warm_images, warm_go)
    bench.log("warming up: %d images, %d Go versions" % (warm_images, warm_go))
    load.prewarm()

    bench.log("soak: %.1f minutes; charts and summary go to %s" % (args.minutes, args.out))
    t0 = time.monotonic()
    stats.t0 = t0
    faults = Faults(args, wharf, args.disk_dir or None, t0, total)
    for start, dur, _name, label in faults.plan:
        bench.log("  at %5.1f min: %s%s" % (start / 60, label, " for %.0f s" % dur if dur else ""))
    load.start()
    fault_thread = threading.Thread(target=faults.run, name="faults", daemon=True)
    fault_thread.start()

    samples = []
    csv_path = os.path.join(args.out, "samples.csv")
    metric_names = ["wharf_connections_open"]
    cpu_prev, t_prev = wharf.cpu_seconds(), 0.0
    with open(csv_path, "w") as csv:
        csv.write("#" + ",".join(CSV_FIELDS) + "\n")
        next_at = args.interval
        last_report = 0
        while True:
            delay = t0 + next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            t = time.monotonic() - t0
            next_at += args.interval
            recs = stats.take()
            lat = sorted(r[1] * 1000 for r in recs)
            pid = wharf.pid()
            row = {f: "" for f in CSV_FIELDS}
            row["t"] = round(t, 2)
            if pid:
                try:
                    rss, anon, filed = proc_rss_mib(pid)
                    row["rss_mib"], row["rss_anon_mib"], row["rss_file_mib"] = round(rss, 2), round(anon, 2), round(filed, 2)
                    row["fds"] = proc_fds(pid)
                except OSError:
                    pass
                m = scrape(args.port, metric_names)
                if "wharf_connections_open" in m:
                    row["conns"] = int(m["wharf_connections_open"])
            cpu = wharf.cpu_seconds()
            if t > t_prev:
                row["cpu_pct"] = round(100 * max(0.0, cpu - cpu_prev) / (t - t_prev), 1)
            cpu_prev, t_prev = cpu, t
            row["data_mib"] = round(tree_bytes(data_dir) / MIB, 1)
            row["index_mib"] = round(tree_bytes(os.path.join(data_dir, "index")) / MIB, 1)
            st = os.statvfs(base)
            row["fs_used_mib"] = round((st.f_blocks - st.f_bfree) * st.f_frsize / MIB, 1)
            row["reqs"] = len(recs)
            row["rps"] = round(len(recs) / args.interval, 1)
            if lat:
                row["p50_ms"] = round(percentile(lat, 0.50), 3)
                row["p99_ms"] = round(percentile(lat, 0.99), 3)
            row["errors"] = sum(1 for r in recs if r[3] not in ("ok", "corrupt"))
            row["corrupt"] = sum(1 for r in recs if r[3] == "corrupt")
            oc = collections.Counter(r[4] for r in recs)
            row["hit"], row["miss"], row["stale"], row["bypass"] = oc["HIT"], oc["MISS"], oc["STALE"], oc["BYPASS"]
            row["other"] = len(recs) - oc["HIT"] - oc["MISS"] - oc["STALE"] - oc["BYPASS"]
            samples.append(row)
            csv.write(",".join(str(row[f]) for f in CSV_FIELDS) + "\n")
            csv.flush()
            if t - last_report >= 30:
                last_report = t
                bench.log("t=%4.0fs rss=%s MiB fds=%s data=%s MiB %s req/s p50=%s p99=%s ms errors=%d corrupt=%d"
                          % (t, row["rss_mib"], row["fds"], row["data_mib"], row["rps"], row["p50_ms"], row["p99_ms"],
                             row["errors"], row["corrupt"]))
            if t >= total:
                break
    faults.stop.set()
    fault_thread.join(timeout=120)
    load.finish()
    stats.take()  # requests that finished while the workers stopped (not charted)
    if faults.error:
        raise RuntimeError("the fault schedule failed: %r" % faults.error)

    charts = write_charts(args.out, samples, faults.done, fs_size_mib, args.min_free_mib)
    summary = summarize(args, stats, samples, faults.done, wharf, load, started_wall, fs_size_mib, charts)
    with open(os.path.join(args.out, "summary.md"), "w") as f:
        f.write(summary)
    with open(os.path.join(args.out, "faults.json"), "w") as f:
        json.dump([{"start": s, "end": e, "fault": n, "label": lab, "note": note} for s, e, n, lab, note in faults.done], f, indent=1)
    with open(os.path.join(args.out, "requests.csv"), "w") as f:
        f.write("#t,latency_ms,kind,result,x_cache\n")
        for t, lat, kind, result, outcome in stats.all:
            f.write("%.3f,%.3f,%s,%s,%s\n" % (t, lat * 1000, kind, result, outcome))
    print(summary)
    shutil_copy_logs(args)
    return 0


def shutil_copy_logs(args):
    """The tail of wharf's log next to the results: warnings and errors only."""
    src = os.path.join(args.work, "wharf.log")
    try:
        with open(src, errors="replace") as f, open(os.path.join(args.out, "wharf-warnings.log"), "w") as out:
            for line in f:
                if " WARN " in line or " ERROR " in line:
                    out.write(line)
    except OSError:
        pass


if __name__ == "__main__":
    sys.exit(main())
