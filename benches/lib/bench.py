#!/usr/bin/env python3
"""The driver behind benches/compare.sh: starts the origin, the peers and wharf on loopback, runs
every measurement interleaved over several repetitions and writes one markdown table.

Run it through compare.sh, which installs the tools, builds wharf and the fetch client, and owns
the temporary directory. Everything here listens on and connects to 127.0.0.1 only; every process
it starts gets its own session and is stopped (TERM, then KILL) on exit, on error and on SIGINT /
SIGTERM; their ids are also appended to WORK/pids so compare.sh can clean up after a crash.
"""

import argparse
import datetime
import glob
import http.client
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
CLK_TCK = os.sysconf("SC_CLK_TCK")
MIB = 1024 * 1024
GIB = 1024 * MIB
MANIFEST_ACCEPT = (
    "application/vnd.oci.image.manifest.v1+json, "
    "application/vnd.oci.image.index.v1+json, "
    "application/vnd.docker.distribution.manifest.v2+json, "
    "application/vnd.docker.distribution.manifest.list.v2+json"
)

# Column order of the table, and the names used in results.
WHARF, STATIC, NGCACHE, REGPROXY, ORIGIN = "wharf", "static", "ngcache", "regproxy", "origin"
BASE = "baseline"  # --baseline: another wharf build, measured beside this one (its own table)
WHARF_WAIT = "wharf-wait"  # wharf with registry.cold_ranges = "wait" (a row of its own, not a column)
# The shared tier's table: the S3 store read directly, and a replica's next (local-disk) hit.
STORE, DISK = "store", "disk"
COLUMNS = [
    (WHARF, "wharf"),
    (STATIC, "nginx static (sendfile)"),
    (NGCACHE, "nginx proxy_cache"),
    (REGPROXY, "docker-registry proxy"),
    (ORIGIN, "origin direct"),
]

RUNNING = []
ARGS = None


def log(msg):
    print("[%s] %s" % (time.strftime("%H:%M:%S"), msg), file=sys.stderr, flush=True)


def clean_env(extra=None):
    """The environment for child processes: no proxy variables, so nothing leaves loopback."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k.lower() not in ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "ftp_proxy")
        and not k.startswith("GO")
    }
    env["NO_PROXY"] = "127.0.0.1,localhost"
    env["no_proxy"] = "127.0.0.1,localhost"
    if extra:
        env.update(extra)
    return env


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


def http_status(port, path, timeout=2.0):
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        conn.close()
        return resp.status
    except OSError:
        return None


def proc_children():
    """pid -> parent pid, for every process."""
    parents = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry) as f:
                stat = f.read()
        except OSError:
            continue
        parents[int(entry)] = int(stat[stat.rindex(")") + 2 :].split()[1])
    return parents


class Server:
    """One server process (and its children: nginx workers), started in its own session."""

    def __init__(self, name, argv, log_path, env=None, cwd=None, stdout_path=None):
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.stdout_path = stdout_path or log_path
        self.env = env or clean_env()
        self.cwd = cwd
        self.proc = None

    def start(self, port, ready_path="/", timeout=60, ready=None):
        """Starts the process and waits until `ready_path` answers 200 (None: until the port
        accepts connections), or, given `ready`, until it returns true."""
        err = open(self.log_path, "ab")
        out = open(self.stdout_path, "ab") if self.stdout_path != self.log_path else err
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            env=self.env,
            cwd=self.cwd,
            start_new_session=True,
        )
        RUNNING.append(self)
        with open(os.path.join(ARGS.work, "pids"), "a") as f:
            f.write("%d\n" % self.proc.pid)
        deadline = time.time() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    "%s exited with %s; log %s:\n%s"
                    % (self.name, self.proc.returncode, self.log_path, tail(self.log_path))
                )
            if ready is not None:
                if ready():
                    return self
            elif (port_open(port) if ready_path is None else http_status(port, ready_path) == 200):
                return self
            if time.time() > deadline:
                raise RuntimeError("%s did not answer 200 on %s" % (self.name, ready_path or "its port"))
            time.sleep(0.05)

    def pids(self):
        parents = proc_children()
        found = [self.proc.pid]
        frontier = [self.proc.pid]
        while frontier:
            parent = frontier.pop()
            kids = [pid for pid, ppid in parents.items() if ppid == parent]
            found += kids
            frontier += kids
        return found

    def cpu_seconds(self):
        total = 0
        for pid in self.pids():
            try:
                with open("/proc/%d/stat" % pid) as f:
                    fields = f.read()
            except OSError:
                continue
            fields = fields[fields.rindex(")") + 2 :].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        return total / CLK_TCK

    def reset_peak(self):
        for pid in self.pids():
            try:
                with open("/proc/%d/clear_refs" % pid, "w") as f:
                    f.write("5")
            except OSError:
                pass

    def peak_mib(self):
        """Sum of VmHWM over the process tree (nginx: master + workers; shared pages counted in
        each worker, so an upper bound)."""
        total = 0
        for pid in self.pids():
            try:
                with open("/proc/%d/status" % pid) as f:
                    for line in f:
                        if line.startswith("VmHWM:"):
                            total += int(line.split()[1])
            except OSError:
                pass
        return total / 1024

    def stop(self):
        if self.proc is None or self.proc.poll() is not None:
            if self in RUNNING:
                RUNNING.remove(self)
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()
        if self in RUNNING:
            RUNNING.remove(self)


def tail(path, n=30):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return ""


def stop_all():
    for server in list(reversed(RUNNING)):
        try:
            server.stop()
        except Exception as exc:  # keep stopping the others
            log("stopping %s: %s" % (server.name, exc))


def on_signal(signum, _frame):
    raise SystemExit(128 + signum)


def run(argv, env=None, cwd=None, timeout=None, check=True):
    proc = subprocess.run(
        argv,
        env=env or clean_env(),
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise RuntimeError(
            "%s failed (%d)\n--- stdout ---\n%s\n--- stderr ---\n%s"
            % (" ".join(argv), proc.returncode, proc.stdout.decode()[-4000:], proc.stderr.decode()[-4000:])
        )
    return proc


def rmtree(path):
    """Removes a tree even where the go command left it read-only."""

    def onerror(func, p, _exc):
        try:
            os.chmod(os.path.dirname(p), 0o700)
            os.chmod(p, 0o700)
            func(p)
        except OSError:
            pass

    shutil.rmtree(path, onerror=onerror)
    TRASH.removed = time.monotonic()


class Trash:
    """Directories of many small files (a go command's module cache, a Go proxy's store) put
    aside instead of removed during the Go rows, and removed together afterwards. On ext4
    without a journal (these machines' root file system), a new inode is not given a number
    deleted in the last minute (`recently_deleted`: 60 s, longer while the inode table block is
    not yet written back), and finding one past thousands of them makes every file creation
    slow: `go mod download` of the same tree took 0.35 s after a quiet minute and 1.0-1.1 s
    right after earlier runs had been removed, which measured the order of the runs more than
    the servers. `quiet` waits out that minute after the last removal (`rmtree`)."""

    WINDOW = 65.0

    def __init__(self):
        self.count = 0
        self.removed = None

    def put(self, path):
        if not os.path.exists(path):
            return
        bin_dir = os.path.join(ARGS.work, "trash")
        os.makedirs(bin_dir, exist_ok=True)
        self.count += 1
        os.rename(path, os.path.join(bin_dir, str(self.count)))

    def empty(self):
        bin_dir = os.path.join(ARGS.work, "trash")
        if os.path.exists(bin_dir):
            rmtree(bin_dir)

    def quiet(self):
        if self.removed is not None:
            wait = self.WINDOW - (time.monotonic() - self.removed)
            if wait > 0:
                log("waiting %.0f s for the file system to forget the last removals" % wait)
                time.sleep(wait)


TRASH = Trash()


def fresh_dir(name):
    path = os.path.join(ARGS.work, "run", "%s-%d" % (name, time.monotonic_ns()))
    os.makedirs(path)
    return path


# ---------------------------------------------------------------------------------------------
# The servers


class Origin:
    """Debian's docker-registry (distribution 2.8) holding the generated images."""

    def __init__(self):
        self.port = free_port()
        self.dir = os.path.join(ARGS.work, "origin")
        os.makedirs(os.path.join(self.dir, "storage"), exist_ok=True)
        config = os.path.join(self.dir, "config.yml")
        with open(config, "w") as f:
            f.write(registry_config(self.port, os.path.join(self.dir, "storage")))
        self.access = os.path.join(self.dir, "access.log")
        self.server = Server(
            "origin docker-registry",
            [ARGS.registry, "serve", config],
            os.path.join(self.dir, "registry.log"),
            stdout_path=self.access,
        ).start(self.port, "/v2/")

    def blob_gets(self, hex_digest):
        """Completed GETs of that blob, under any repository, so far."""
        pattern = re.compile(r'"GET /v2/[^ "]*/blobs/sha256:%s HTTP/' % hex_digest)
        with open(self.access, errors="replace") as f:
            return len(pattern.findall(f.read()))

    def requests(self):
        with open(self.access, errors="replace") as f:
            return sum(1 for line in f if '"GET ' in line or '"HEAD ' in line)


def registry_config(port, storage, remote=None):
    text = (
        "version: 0.1\n"
        "log:\n  level: warn\n"
        "storage:\n  filesystem:\n    rootdirectory: %s\n  cache:\n    blobdescriptor: inmemory\n"
        "http:\n  addr: 127.0.0.1:%d\n  secret: wharf-bench\n" % (storage, port)
    )
    if remote:
        text += "proxy:\n  remoteurl: %s\n" % remote
    return text


def start_regproxy(origin, name="regproxy"):
    port = free_port()
    d = fresh_dir(name)
    os.makedirs(os.path.join(d, "storage"))
    config = os.path.join(d, "config.yml")
    with open(config, "w") as f:
        f.write(registry_config(port, os.path.join(d, "storage"), "http://127.0.0.1:%d" % origin.port))
    server = Server("docker-registry proxy", [ARGS.registry, "serve", config], os.path.join(d, "log"))
    server.start(port, "/v2/")
    server.port, server.dir = port, d
    return server


def nginx_user_line():
    # Run as root (the usual case here: apt needs it), nginx would drop its workers to nobody,
    # who cannot read the 0700 temporary directory.
    return "user root;" if os.geteuid() == 0 else ""


def render(template, values):
    with open(os.path.join(HERE, template)) as f:
        text = f.read()
    for key, value in values.items():
        text = text.replace("@@%s@@" % key, str(value))
    leftover = re.findall(r"@@[A-Z_]+@@", text)
    if leftover:
        raise RuntimeError("unrendered placeholders in %s: %s" % (template, leftover))
    return text


def start_nginx(name, template, values, ready_port, ready_path):
    d = fresh_dir(name)
    for sub in ("tmp", "cache"):
        os.makedirs(os.path.join(d, sub))
    values = dict(values, PREFIX=d, USER=nginx_user_line(), WORKERS=ARGS.nginx_workers)
    conf = os.path.join(d, "nginx.conf")
    with open(conf, "w") as f:
        f.write(render(template, values))
    server = Server(
        name,
        [ARGS.nginx, "-p", d, "-e", "stderr", "-c", conf, "-g", "daemon off;"],
        os.path.join(d, "stderr.log"),
    )
    server.start(ready_port, ready_path)
    server.dir = d
    return server


def make_cert():
    """A throwaway self-signed certificate for 127.0.0.1 (the TLS rows): (cert, key) paths."""
    d = fresh_dir("tls")
    cert, key = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")
    run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"])
    return cert, key


def start_static(meta, tls=None, name="nginx-static"):
    """nginx serving the benchmark's files; with `tls` (cert, key), over HTTPS only."""
    port = free_port()
    blocks = []
    for m in meta["static"]:
        blocks.append(
            "        location = /v2/%s/manifests/%s {\n"
            "            types { }\n"
            "            default_type %s;\n"
            "            alias %s;\n"
            "        }\n"
            % (m["repo"], m["ref"], m["mediaType"], os.path.join(ARGS.data, "static", "manifests", m["repo"], m["ref"]))
        )
    ssl_files = ""
    if tls:
        # One protocol and curve for both servers: TLS 1.3 (AES-GCM or ChaCha20, as negotiated).
        ssl_files = (
            "        ssl_certificate %s;\n        ssl_certificate_key %s;\n"
            "        ssl_protocols TLSv1.3;\n        ssl_session_cache shared:SSL:1m;\n" % tls
        )
    server = start_nginx(
        name,
        "nginx-static.conf",
        {
            "PORT": port,
            "SSL": " ssl" if tls else "",
            "SSL_FILES": ssl_files,
            "STATIC": os.path.join(ARGS.data, "static"),
            "GOTREE": os.path.join(ARGS.data, "go"),
            "MANIFESTS": "".join(blocks),
        },
        port,
        None if tls else "/v2/",
    )
    server.port = port
    server.scheme = "https" if tls else "http"
    return server


def start_ngcache(origin, static, name="ngcache"):
    reg, go = free_port(), free_port()
    server = start_nginx(
        name,
        "nginx-cache.conf",
        {"ORIGIN_PORT": origin.port, "GO_PORT": static.port, "REG_PORT": reg, "GOCACHE_PORT": go},
        reg,
        "/v2/",
    )
    server.port, server.go_port = reg, go
    return server


def start_wharf(origin, static, name="wharf", tables="", port=None, tls=None, registry_keys="", binary=None, sumdb=None):
    """wharf on an empty data directory; `tables` is appended to its config ([shared], [peers]),
    `registry_keys` to its [registry] table; with `tls` (cert, key), it serves HTTPS; `binary`
    runs another build (--baseline); with `sumdb` (a SumDb), `go.verify = true` against it as the
    only `[[go.sumdb]]`."""
    if tls:
        tables += '[tls]\ncert = "%s"\nkey = "%s"\n' % tls
    verify = "false"
    if sumdb:
        verify = "true"
        tables += '[[go.sumdb]]\nname = "%s"\nkey = "%s"\nurl = "%s"\n' % (sumdb.name, sumdb.key, sumdb.url)
    port = port or free_port()
    d = fresh_dir(name)
    config = os.path.join(d, "wharf.toml")
    with open(config, "w") as f:
        f.write(
            'listen = "127.0.0.1:%d"\n'
            'data_dir = "%s"\n'
            "[log]\nlevel = \"%s\"\n"
            '[registry]\ndefault_upstream = "origin"\n%s'
            '[[registry.upstream]]\nname = "origin"\nurl = "http://127.0.0.1:%d"\n'
            '[go]\nupstreams = ["http://127.0.0.1:%d/go"]\nverify = %s\n'
            '[egress]\nallow = ["127.0.0.1"]\n'
            % (port, os.path.join(d, "data"), ARGS.wharf_log_level, registry_keys, origin.port, static.port, verify)
            + tables
        )
    server = Server(name, [binary or ARGS.wharf, "serve", "--config", config], os.path.join(d, "log"))
    server.start(port, None if tls else "/healthz")
    server.port, server.dir = port, d
    server.scheme = "https" if tls else "http"
    return server


class SumDb:
    """The checksum database of the generated Go tree: tests/support/gosumdb (compare.sh builds it
    against Debian's golang.org/x/mod) over the module sources unpacked from gen.py's zips, so it
    records the `h1:` hashes of exactly the files nginx and wharf serve (the hashes cover file
    names and contents, not the zip's encoding). Its own GOPROXY tree (`/mod/`) goes unused."""

    def __init__(self):
        d = os.path.join(ARGS.work, "gosumdb")
        src = os.path.join(d, "src")
        # Zip entries are `<module>@<version>/<file>`: the helper's `-src` layout as they stand.
        for root, _dirs, files in os.walk(os.path.join(ARGS.data, "go")):
            for name in files:
                if name.endswith(".zip"):
                    with zipfile.ZipFile(os.path.join(root, name)) as z:
                        z.extractall(src)
        ready = os.path.join(d, "ready.json")
        self.server = Server(
            "checksum database",
            [ARGS.gosumdb, "-src", src, "-out", os.path.join(d, "download")],
            os.path.join(d, "requests.log"),
            stdout_path=ready,
        )

        def first_line():
            with open(ready) as f:
                line = f.readline()
            return json.loads(line) if line.endswith("\n") else None

        self.server.start(None, ready=first_line)
        info = first_line()
        # The verifier key is `<name>+<hash>+<key>`; the database answers under /sumdb/.
        self.key = info["vkey"]
        self.name = self.key.split("+", 1)[0]
        self.url = "http://%s/sumdb" % info["addr"]
        want = 2 * len(ARGS.meta["go"]["modules"])
        if len(info["modules"]) != want:
            raise RuntimeError("the checksum database holds %d module versions, want %d" % (len(info["modules"]), want))

    def direct(self):
        """GOSUMDB for a go command that reads the database itself."""
        return "%s %s" % (self.key, self.url)


# ---------------------------------------------------------------------------------------------
# Clients


def fetch(port, path, streams, size, repeat=1, accept=None, scheme="http"):
    return fetch_urls(["%s://127.0.0.1:%d%s" % (scheme, port, path)], streams, size, repeat, accept)


def fetch_urls(urls, streams, size, repeat=1, accept=None, extra=(), check=True, cpu=None):
    """The fetch client: `streams` streams spread over `urls` (stream i asks urls[i % n]);
    `extra` are more flags (the S3 signature). With check=False, failed GETs are returned.
    `cpu`: the client runs on that CPU only."""
    argv = (["taskset", "-c", str(cpu)] if cpu is not None else []) + [ARGS.fetch, "-n", str(streams), "-repeat", str(repeat), "-size", str(size)] + list(extra)
    if accept:
        argv += ["-accept", accept]
    argv += urls
    out = run(argv, timeout=900).stdout
    result = json.loads(out)
    if check and result.get("errors"):
        raise RuntimeError("GET %s: %d errors, first: %s" % (urls[0], len(result["errors"]), result["errors"][0]))
    return result


def wrk(port, path, scheme="http"):
    argv = [
        ARGS.wrk,
        "-t",
        str(ARGS.wrk_threads),
        "-c",
        str(ARGS.wrk_connections),
        "-d",
        "%ds" % ARGS.wrk_seconds,
        "--latency",
        "-s",
        os.path.join(HERE, "latency.lua"),
        "-H",
        "Accept: " + MANIFEST_ACCEPT,
        "%s://127.0.0.1:%d%s" % (scheme, port, path),
    ]
    out = run(argv, timeout=ARGS.wrk_seconds + 60).stdout.decode()
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    m = re.search(r"\s99%\s+([\d.]+)(us|ms|s)\b", out)
    p99 = float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[m.group(2)]
    p999 = float(re.search(r"p999_us (\d+)", out).group(1)) / 1000.0
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors:.*", out)
    if bad or errors:
        raise RuntimeError("wrk against %s reported errors:\n%s" % (path, out))
    return rps, p99, p999


def skopeo(args, extra_env=None):
    conf = os.path.join(ARGS.work, "skopeo")
    os.makedirs(os.path.join(conf, "tmp"), exist_ok=True)
    with open(os.path.join(conf, "policy.json"), "w") as f:
        f.write('{"default":[{"type":"insecureAcceptAnything"}]}')
    with open(os.path.join(conf, "registries.conf"), "w") as f:
        f.write("unqualified-search-registries = []\n")
    env = clean_env({"TMPDIR": os.path.join(conf, "tmp"), "HOME": conf})
    argv = [
        ARGS.skopeo,
        "--policy",
        os.path.join(conf, "policy.json"),
        "--registries-conf",
        os.path.join(conf, "registries.conf"),
    ] + args
    return run(argv, env=env, timeout=900)


def cold_pull(port, image):
    dest = fresh_dir("pull")
    ref = "docker://127.0.0.1:%d/%s:%s" % (port, image["repo"], image["tag"])
    t0 = time.perf_counter()
    skopeo(["copy", "--src-tls-verify=false", ref, "dir:" + dest])
    wall = time.perf_counter() - t0
    rmtree(dest)
    return wall


def go_download(proxy_url, gosumdb=None):
    """`go mod download` of the whole generated graph, into a new, empty GOMODCACHE (and GOPATH,
    so the go command's own checksum-database cache starts empty too). With `gosumdb` (a GOSUMDB
    value), every module is verified against that database; without, nothing is."""
    d = fresh_dir("go")
    main = os.path.join(d, "main")
    shutil.copytree(os.path.join(ARGS.data, "gomain"), main)
    sums = {"GOSUMDB": gosumdb} if gosumdb else {"GOSUMDB": "off", "GONOSUMDB": "*"}
    env = clean_env(
        dict(
            sums,
            HOME=d,
            GOPATH=os.path.join(d, "gopath"),
            GOMODCACHE=os.path.join(d, "modcache"),
            GOCACHE=os.path.join(d, "gocache"),
            GOENV="off",
            GOPROXY=proxy_url,
            GOPRIVATE="",
            GONOPROXY="",
            GOFLAGS="-mod=mod",
            GOTOOLCHAIN="local",
            GO111MODULE="on",
            GOVCS="*:off",
        )
    )
    t0 = time.perf_counter()
    run([ARGS.go, "mod", "download"], env=env, cwd=main, timeout=600)
    wall = time.perf_counter() - t0
    zips = 0
    for _root, _dirs, files in os.walk(os.path.join(d, "modcache", "cache", "download")):
        zips += sum(1 for name in files if name.endswith(".zip"))
    TRASH.put(d)
    want = len(ARGS.meta["go"]["modules"])
    if zips != want:
        raise RuntimeError("go mod download via %s left %d zips, want %d" % (proxy_url, zips, want))
    return wall


# ---------------------------------------------------------------------------------------------
# Results


class Results:
    def __init__(self):
        self.values = {}

    def add(self, metric, server, value):
        self.values.setdefault(metric, {}).setdefault(server, []).append(value)

    def median(self, metric, server):
        vals = self.values.get(metric, {}).get(server)
        return statistics.median(vals) if vals else None


def rotate(items, n):
    n %= len(items)
    return items[n:] + items[:n]


def blob_path(image):
    return "/v2/%s/blobs/%s" % (image["repo"], image["layer"]["digest"])


def measure_blob(res, servers, image, streams, repeat, label, rss_metric=None):
    size = image["layer"]["size"]
    for name, server in servers:
        if rss_metric:
            server.reset_peak()
        cpu0 = server.cpu_seconds()
        r = fetch(server.port, blob_path(image), streams, size, repeat)
        cpu = server.cpu_seconds() - cpu0
        gib = r["bytes"] / GIB
        res.add("blob%s_mibs" % label, name, r["bytes"] / MIB / r["wall"])
        res.add("blob%s_cpu" % label, name, cpu / gib)
        if rss_metric:
            res.add(rss_metric, name, server.peak_mib())


def measure_tls(res, servers, big, multi):
    """The TLS rows: wharf's rustls listener against nginx with ssl, same certificate."""
    size = big["layer"]["size"]
    by_tag = "/v2/%s/manifests/%s" % (multi["repo"], multi["tag"])
    for name, server in servers:
        for streams, repeat, label in ((1, ARGS.repeat1, "1"), (8, 1, "8")):
            cpu0 = server.cpu_seconds()
            r = fetch(server.port, blob_path(big), streams, size, repeat, scheme="https")
            cpu = server.cpu_seconds() - cpu0
            res.add("tls_blob%s_mibs" % label, name, r["bytes"] / MIB / r["wall"])
            res.add("tls_blob%s_cpu" % label, name, cpu / (r["bytes"] / GIB))
        rps, p99, _ = wrk(server.port, by_tag, scheme="https")
        res.add("tls_tag_rps", name, rps)
        res.add("tls_tag_p99", name, p99)


def prepare_tls(origin, static, images):
    """wharf with [tls] (warmed with the big layer and the multi manifests) and nginx static with
    ssl, on one throwaway certificate."""
    cert = make_cert()
    nginx = start_static(ARGS.meta, tls=cert, name="nginx-static-tls")
    wharf = start_wharf(origin, static, "wharf-tls", tls=cert)
    big, multi = images["big"], images["multi"]
    for _ in range(2):
        fetch(wharf.port, blob_path(big), 1, big["layer"]["size"], scheme="https")
        for ref in (multi["tag"], multi["manifest"]["digest"]):
            fetch(wharf.port, "/v2/%s/manifests/%s" % (multi["repo"], ref), 1, multi["manifest"]["size"],
                  accept=MANIFEST_ACCEPT, scheme="https")
    return [(WHARF, wharf), (STATIC, nginx)]


def measure_manifests(res, servers, image):
    by_tag = "/v2/%s/manifests/%s" % (image["repo"], image["tag"])
    by_digest = "/v2/%s/manifests/%s" % (image["repo"], image["manifest"]["digest"])
    for name, server in servers:
        rps, p99, p999 = wrk(server.port, by_tag)
        res.add("tag_rps", name, rps)
        res.add("tag_p99", name, p99)
        res.add("tag_p999", name, p999)
    for name, server in servers:
        rps, p99, p999 = wrk(server.port, by_digest)
        res.add("digest_rps", name, rps)
        res.add("digest_p99", name, p99)
        res.add("digest_p999", name, p999)


def fresh_proxy(kind, origin, static):
    if kind == WHARF:
        return start_wharf(origin, static, "wharf-cold")
    if kind == NGCACHE:
        return start_ngcache(origin, static, "ngcache-cold")
    if kind == REGPROXY:
        return start_regproxy(origin, "regproxy-cold")
    raise ValueError(kind)


def measure_cold_pulls(res, rep, origin, static):
    for key in ("big", "small"):
        image = ARGS.meta["images"][key]
        for kind in rotate([ORIGIN, WHARF, NGCACHE, REGPROXY], rep):
            if kind == ORIGIN:
                res.add("pull_%s" % key, ORIGIN, cold_pull(origin.port, image))
                continue
            server = fresh_proxy(kind, origin, static)
            try:
                res.add("pull_%s" % key, kind, cold_pull(server.port, image))
            finally:
                server.stop()
                rmtree(server.dir)


def measure_herd(res, rep, origin, static):
    image = ARGS.meta["images"]["big"]
    size = image["layer"]["size"]
    hexd = image["layer"]["digest"][7:]
    for kind in rotate([WHARF, NGCACHE, REGPROXY], rep):
        for streams in (1, ARGS.herd):
            server = fresh_proxy(kind, origin, static)
            try:
                before = origin.blob_gets(hexd)
                r = fetch(server.port, blob_path(image), streams, size)
                time.sleep(0.3)  # the origin logs a request when it has sent the last byte
                gets = origin.blob_gets(hexd) - before
            finally:
                server.stop()
                rmtree(server.dir)
            if streams == 1:
                res.add("cold1_s", kind, r["wall"])
            else:
                res.add("herd_s", kind, r["wall"])
                res.add("herd_origin_gets", kind, gets)


def range_ms(port, path, first, last):
    """Time to the last byte of one `Range: bytes=first-last` GET (ms); the answer must be that
    range."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    t0 = time.perf_counter()
    conn.request("GET", path, headers={"Range": "bytes=%d-%d" % (first, last)})
    resp = conn.getresponse()
    body = resp.read()
    ms = (time.perf_counter() - t0) * 1000.0
    conn.close()
    # A cache that ignores ranges on a miss (nginx proxy_cache) answers 200 with everything: the
    # client then waited for the whole blob, which is what the row shows.
    if not (resp.status == 206 and len(body) == last - first + 1) and not (resp.status == 200 and len(body) > last):
        raise RuntimeError("range GET %s on port %d: %d with %d bytes" % (path, port, resp.status, len(body)))
    return ms


def measure_cold_range(res, rep, origin, static):
    """Lazy pulling: the last MiB of the cold 256 MiB layer, as a snapshotter reads a table of
    contents (wharf's default forwards it; "wait" waits for the fill to get there)."""
    image = ARGS.meta["images"]["big"]
    size = image["layer"]["size"]
    first, last = size - (1 << 20), size - 1
    for kind in rotate([ORIGIN, WHARF, WHARF_WAIT, NGCACHE, REGPROXY], rep):
        if kind == ORIGIN:
            res.add("cold_range_ms", ORIGIN, range_ms(origin.port, blob_path(image), first, last))
            continue
        if kind == WHARF_WAIT:
            server = start_wharf(origin, static, "wharf-cold", registry_keys='cold_ranges = "wait"\n')
        else:
            server = fresh_proxy(kind, origin, static)
        try:
            ms = range_ms(server.port, blob_path(image), first, last)
        finally:
            server.stop()
            rmtree(server.dir)
        if kind == WHARF_WAIT:
            res.add("cold_range_wait_ms", WHARF, ms)
        else:
            res.add("cold_range_ms", kind, ms)


def measure_herd_warm(res, servers):
    """The same concurrent GETs from warm caches: what delivering that many copies costs here."""
    image = ARGS.meta["images"]["big"]
    for name, server in servers:
        if name in (WHARF, STATIC):
            res.add("herd_warm_s", name, fetch(server.port, blob_path(image), ARGS.herd, image["layer"]["size"])["wall"])


def measure_go(res, rep, static, warm):
    """The Go rows, with nothing removed until they are done (see `Trash`)."""
    TRASH.quiet()
    try:
        measure_go_rows(res, rep, static, warm)
    finally:
        TRASH.empty()


def measure_go_rows(res, rep, static, warm):
    for kind in rotate([STATIC, WHARF, NGCACHE], rep):
        if kind == STATIC:
            res.add("go_cold", STATIC, go_download("http://127.0.0.1:%d/go" % static.port))
            continue
        server = fresh_proxy(kind, warm["origin"], static)
        try:
            port = server.go_port if kind == NGCACHE else server.port
            res.add("go_cold", kind, go_download("http://127.0.0.1:%d/go" % port))
        finally:
            server.stop()
            TRASH.put(server.dir)
    for kind in rotate([STATIC, WHARF, NGCACHE], rep):
        res.add("go_warm", kind, go_download(go_url(kind, warm)))
    measure_go_verified(res, rep, static, warm)


def measure_go_verified(res, rep, static, warm):
    """Cold, verified as users run it: nginx (static, or proxy_cache in front of it) with the go
    command reading the checksum database itself, against a fresh wharf with `go.verify = true`
    whose client reaches the database through wharf (GOSUMDB: the key alone, as README says)."""
    sumdb = warm["sumdb"]
    for kind in rotate([STATIC, WHARF, NGCACHE], rep):
        if kind == STATIC:
            res.add("go_cold_verified", STATIC, go_download("http://127.0.0.1:%d/go" % static.port, sumdb.direct()))
            continue
        if kind == WHARF:
            server = start_wharf(warm["origin"], static, "wharf-cold-verified", sumdb=sumdb)
            gosumdb, port = sumdb.key, server.port
        else:
            server = fresh_proxy(kind, warm["origin"], static)
            gosumdb, port = sumdb.direct(), server.go_port
        try:
            res.add("go_cold_verified", kind, go_download("http://127.0.0.1:%d/go" % port, gosumdb))
        finally:
            server.stop()
            TRASH.put(server.dir)


def go_url(kind, warm):
    server = warm[kind]
    port = server.go_port if kind == NGCACHE else server.port
    return "http://127.0.0.1:%d/go" % port


def warm_up(origin, servers, images):
    """Fills every warm server, then checks that a second round costs the origin nothing."""
    for _ in range(60):
        for name, server in servers:
            for image in images:
                fetch(server.port, blob_path(image), 1, image["layer"]["size"])
                for ref in (image["tag"], image["manifest"]["digest"]):
                    fetch(server.port, "/v2/%s/manifests/%s" % (image["repo"], ref), 1, image["manifest"]["size"], accept=MANIFEST_ACCEPT)
        time.sleep(0.5)
        before = {image["layer"]["digest"]: origin.blob_gets(image["layer"]["digest"][7:]) for image in images}
        for name, server in servers:
            for image in images:
                fetch(server.port, blob_path(image), 1, image["layer"]["size"])
        time.sleep(0.5)
        after = {image["layer"]["digest"]: origin.blob_gets(image["layer"]["digest"][7:]) for image in images}
        if before == after:
            return
        log("warm-up: the origin still saw blob requests; another round")
    raise RuntimeError("warm servers kept asking the origin for blobs")


# ---------------------------------------------------------------------------------------------
# The shared tier: replicas of wharf around one S3 bucket (Garage)


class Garage:
    """Garage, an S3-compatible store, as a single-node cluster on loopback, set up as its
    quick-start does: layout assign / apply, bucket create, key create, bucket allow. The key's
    id and secret go to files, which both wharf (`[shared]`) and the fetch client read."""

    BUCKET = "wharf"
    REGION = "garage"

    def __init__(self):
        self.dir = os.path.join(ARGS.work, "garage")
        os.makedirs(self.dir)
        self.port, rpc = free_port(), free_port()
        self.config = os.path.join(self.dir, "garage.toml")
        with open(self.config, "w") as f:
            f.write(
                'metadata_dir = "%s"\ndata_dir = "%s"\ndb_engine = "sqlite"\nreplication_factor = 1\n'
                'rpc_bind_addr = "127.0.0.1:%d"\nrpc_public_addr = "127.0.0.1:%d"\nrpc_secret = "%s"\n'
                '[s3_api]\ns3_region = "%s"\napi_bind_addr = "127.0.0.1:%d"\nroot_domain = ".s3.garage.localhost"\n'
                % (os.path.join(self.dir, "meta"), os.path.join(self.dir, "data"), rpc, rpc, os.urandom(32).hex(), self.REGION, self.port)
            )
        os.chmod(self.config, 0o600)
        self.server = Server(
            "garage", [ARGS.garage, "-c", self.config, "server"], os.path.join(self.dir, "server.log"), env=clean_env({"RUST_LOG": "warn"})
        ).start(self.port, None)
        node = self.cli("node", "id", "-q").strip().split("@")[0]
        self.cli("layout", "assign", "-z", "dc1", "-c", "10G", node)
        self.cli("layout", "apply", "--version", "1")
        self.cli("bucket", "create", self.BUCKET)
        key = self.cli("key", "create", "wharf-bench")
        fields = {}
        for line in key.splitlines():
            if ":" in line:
                name, value = line.split(":", 1)
                fields[name.strip()] = value.strip()
        if not fields.get("Key ID") or not fields.get("Secret key"):
            raise RuntimeError("no key id or secret in `garage key create`:\n" + key)
        self.cli("bucket", "allow", "--read", "--write", "--owner", self.BUCKET, "--key", "wharf-bench")
        self.key_file = os.path.join(self.dir, "s3-key-id")
        self.secret_file = os.path.join(self.dir, "s3-secret")
        for path, value in ((self.key_file, fields["Key ID"]), (self.secret_file, fields["Secret key"])):
            with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
                f.write(value + "\n")

    def cli(self, *args):
        """One `garage` command; retried for a while, since the node needs a moment to answer RPC."""
        deadline = time.time() + 30
        while True:
            p = run([ARGS.garage, "-c", self.config] + list(args), check=False, timeout=60)
            if p.returncode == 0:
                return p.stdout.decode()
            if time.time() > deadline:
                raise RuntimeError(
                    "garage %s failed:\n%s\n%s" % (" ".join(args), p.stderr.decode()[-2000:], tail(os.path.join(self.dir, "server.log")))
                )
            time.sleep(0.2)

    def shared_table(self, replica_id, prefix=""):
        return (
            '[shared]\nendpoint = "http://127.0.0.1:%d"\nbucket = "%s"\nprefix = "%s"\nregion = "%s"\n'
            'access_key_id_file = "%s"\nsecret_access_key_file = "%s"\nreplica_id = "%s"\nsync_interval = "200ms"\n'
            % (self.port, self.BUCKET, prefix, self.REGION, self.key_file, self.secret_file, replica_id)
        )

    def blob_url(self, hex_digest):
        """The object a replica uploads for a blob (path-style addressing)."""
        return "http://127.0.0.1:%d/%s/blobs/sha256/%s" % (self.port, self.BUCKET, hex_digest)

    def signed(self):
        """fetch flags that sign its GETs with the bucket's key."""
        return ["-s3-key", self.key_file, "-s3-secret", self.secret_file, "-s3-region", self.REGION]


def peer_secret():
    path = os.path.join(ARGS.work, "peer-secret")
    if not os.path.exists(path):
        with open(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
            f.write(os.urandom(16).hex() + "\n")
    return path


def start_replicas(origin, static, garage, name, n, prefix="", peers=True):
    """n wharf replicas on one bucket (under `prefix`), each on its own port and empty data dir;
    with peers, they know each other through `[peers]` and a shared secret."""
    ports = [free_port() for _ in range(n)]
    urls = ["http://127.0.0.1:%d" % port for port in ports]
    replicas = []
    try:
        for i, port in enumerate(ports):
            tables = garage.shared_table("%s_%d" % (name, i), prefix)
            if peers:
                tables += '[peers]\nmembers = [%s]\nadvertise = "%s"\nsecret_file = "%s"\n' % (
                    ", ".join('"%s"' % u for u in urls),
                    urls[i],
                    peer_secret(),
                )
            replicas.append(start_wharf(origin, static, "%s-%d" % (name, i), tables, port))
        if peers:
            wait_peers_up(replicas)
    except BaseException:
        stop_replicas(replicas)
        raise
    return replicas


def stop_replicas(replicas):
    for r in replicas:
        r.stop()
        rmtree(r.dir)


def health(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        conn.request("GET", "/healthz")
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


def wait_peers_up(replicas):
    """Each replica sees every member up (one started before the others listened)."""
    deadline = time.time() + 30
    while True:
        reports = [health(r).get("peers", []) for r in replicas]
        if all(len(p) == len(replicas) and all(m["up"] for m in p) for p in reports):
            return
        if time.time() > deadline:
            raise RuntimeError("replicas do not see each other: %s" % reports)
        time.sleep(0.2)


def wait_uploaded(replica, garage, image):
    """Until the bucket holds the blob and the replica's outbox is empty (the records naming it
    follow the object, so both are in the bucket then)."""
    size = image["layer"]["size"]
    url = garage.blob_url(image["layer"]["digest"][7:])
    deadline = time.time() + 300
    while fetch_urls([url], 1, size, extra=garage.signed(), check=False)["errors"]:
        if time.time() > deadline:
            raise RuntimeError("the blob never reached the bucket; replica log:\n" + tail(replica.log_path))
        time.sleep(0.2)
    while True:
        shared = health(replica).get("shared", {})
        if shared.get("pending") == 0:
            return
        if time.time() > deadline:
            raise RuntimeError("uploads still pending: %s" % shared)
        time.sleep(0.2)


def prepare_shared(origin, static, garage):
    """Replica A fills the large layer from the origin and uploads it; then a warm fleet of
    three replicas with peers, each holding it on its own disk."""
    image = ARGS.meta["images"]["big"]
    size = image["layer"]["size"]
    a = start_wharf(origin, static, "wharf-a", garage.shared_table("a"))
    try:
        fetch(a.port, blob_path(image), 1, size)
        wait_uploaded(a, garage, image)
    finally:
        a.stop()
        rmtree(a.dir)
    fleet = start_replicas(origin, static, garage, "fleet", 3)
    for r in fleet:
        fetch(r.port, blob_path(image), 1, size)
        cache = fetch(r.port, blob_path(image), 1, size)["cache"][0]
        if cache != "HIT":
            raise RuntimeError("a warm replica answered X-Cache: %s" % cache)
    return fleet


def mibs(result):
    return result["bytes"] / MIB / result["wall"]


def pin(server, cpus):
    """Every thread of the server's processes on `cpus` (threads started later inherit it)."""
    for pid in server.pids():
        try:
            tids = os.listdir("/proc/%d/task" % pid)
        except OSError:
            continue
        for tid in tids:
            try:
                os.sched_setaffinity(int(tid), cpus)
            except OSError:
                pass


PINNED_SAMPLES = 3


def cpu_ticks():
    """Per CPU: (busy, total) jiffies from /proc/stat (busy: all but idle and iowait)."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            name, _, rest = line.partition(" ")
            if name.startswith("cpu") and name != "cpu":
                v = [int(x) for x in rest.split()]
                out[int(name[3:])] = (sum(v) - v[3] - v[4], sum(v))
    return out


def busy_percent(before, after, cpu):
    busy = after[cpu][0] - before[cpu][0]
    total = after[cpu][1] - before[cpu][1]
    return 100.0 * busy / total if total else 0.0


def measure_tier_hit_pinned(res, rep, origin, static, garage):
    """The tier hit again with the store on one CPU and the replica and the client on another
    (in the store column, the client on that other CPU): as when the store is a machine of its
    own, the replica's work does not take the store's CPU. Both columns measured the same way."""
    image = ARGS.meta["images"]["big"]
    size = image["layer"]["size"]
    hexd = image["layer"]["digest"][7:]
    store = garage.server
    everything = os.sched_getaffinity(0)
    store_cpu, other_cpu = sorted(everything)[:2]
    pin(store, {store_cpu})
    try:
        # A first byte is a few milliseconds, once per fresh replica: three samples of each
        # column per repetition, so the median is not one draw.
        for kind in rotate([STORE, WHARF], rep) * PINNED_SAMPLES:
            if kind == STORE:
                before = cpu_ticks()
                r = fetch_urls([garage.blob_url(hexd)], 1, size, extra=garage.signed(), cpu=other_cpu)
                after = cpu_ticks()
            else:
                b = start_wharf(origin, static, "wharf-pinned", garage.shared_table("p%d" % rep))
                try:
                    pin(b, {other_cpu})
                    before = cpu_ticks()
                    r = fetch_urls(["http://127.0.0.1:%d%s" % (b.port, blob_path(image))], 1, size, cpu=other_cpu)
                    after = cpu_ticks()
                finally:
                    b.stop()
                    rmtree(b.dir)
            res.add("tier_pinned_mibs", kind, mibs(r))
            res.add("tier_pinned_first_ms", kind, r["first"][0] * 1000)
            # Which CPU was the bound: busy shares over the GET (the client's start included).
            res.add("tier_pinned_store_busy", kind, busy_percent(before, after, store_cpu))
            res.add("tier_pinned_other_busy", kind, busy_percent(before, after, other_cpu))
    finally:
        pin(store, everything)


def measure_tier_hit(res, rep, origin, static, garage):
    """A fresh replica B (empty disk, the bucket A filled) serves the layer: its first GET is a
    tier hit, its second a local-disk hit; against a GET straight from the store and nginx."""
    image = ARGS.meta["images"]["big"]
    size = image["layer"]["size"]
    hexd = image["layer"]["digest"][7:]
    store = garage.server

    def record(server, r, cpu):
        res.add("tier_mibs", server, mibs(r))
        res.add("tier_first_ms", server, r["first"][0] * 1000)
        res.add("tier_cpu", server, cpu / (r["bytes"] / GIB))

    for kind in rotate([STORE, WHARF, STATIC], rep):
        if kind == STORE:
            cpu0 = store.cpu_seconds()
            r = fetch_urls([garage.blob_url(hexd)], 1, size, extra=garage.signed())
            record(STORE, r, store.cpu_seconds() - cpu0)
        elif kind == STATIC:
            cpu0 = static.cpu_seconds()
            r = fetch(static.port, blob_path(image), 1, size)
            record(STATIC, r, static.cpu_seconds() - cpu0)
        else:
            b = start_wharf(origin, static, "wharf-b", garage.shared_table("b%d" % rep))
            try:
                before = origin.blob_gets(hexd)
                for server, nth in ((WHARF, "first"), (DISK, "next")):
                    b.reset_peak()
                    cpu0 = b.cpu_seconds() + store.cpu_seconds()
                    r = fetch(b.port, blob_path(image), 1, size)
                    record(server, r, b.cpu_seconds() + store.cpu_seconds() - cpu0)
                    res.add("tier_rss", server, b.peak_mib())
                    if nth == "next":
                        res.add("tier_next_hit", WHARF, int(r["cache"][0] == "HIT"))
                time.sleep(0.3)  # the origin logs a request when it has sent the last byte
                res.add("tier_origin_get", WHARF, origin.blob_gets(hexd) - before)
            finally:
                b.stop()
                rmtree(b.dir)


def measure_fleet(res, rep, fleet):
    """Warm: 8 streams over the three replicas against 8 on one; 24 over the three for scale."""
    image = ARGS.meta["images"]["big"]
    size = image["layer"]["size"]
    urls = ["http://127.0.0.1:%d%s" % (r.port, blob_path(image)) for r in fleet]
    for kind in rotate(["one", "three"], rep):
        if kind == "one":
            res.add("agg_one_mibs", WHARF, mibs(fetch_urls(urls[:1], 8, size)))
        else:
            res.add("agg_three_mibs", WHARF, mibs(fetch_urls(urls, 8, size)))
    res.add("xherd_warm_s", WHARF, fetch_urls(urls, 24, size)["wall"])


def measure_cross_herd(res, rep, origin, static, garage):
    """Cold, bucket included (a new key prefix each time): 8 concurrent GETs on each of three
    new replicas with peers, against one GET on one new replica."""
    image = ARGS.meta["images"]["big"]
    size = image["layer"]["size"]
    hexd = image["layer"]["digest"][7:]
    for kind in rotate(["one", "three"], rep):
        n = 1 if kind == "one" else 3
        name = "cold%d%s" % (rep, kind)
        replicas = start_replicas(origin, static, garage, name, n, prefix=name, peers=n > 1)
        try:
            urls = ["http://127.0.0.1:%d%s" % (r.port, blob_path(image)) for r in replicas]
            before = origin.blob_gets(hexd)
            r = fetch_urls(urls, 8 * n if n > 1 else 1, size)
            time.sleep(0.3)
            gets = origin.blob_gets(hexd) - before
        finally:
            stop_replicas(replicas)
        if n == 1:
            res.add("xcold1_s", WHARF, r["wall"])
        else:
            res.add("xherd_s", WHARF, r["wall"])
            res.add("xherd_origin_gets", WHARF, gets)


# ---------------------------------------------------------------------------------------------
# The table


def fmt(value, digits):
    if value is None:
        return "–"
    if digits == 0:
        return "{:,.0f}".format(value)
    return "{:,.{d}f}".format(value, d=digits)


# metric, label, digits, servers, (ratio numerator server, ratio denominator server), target
ROWS = [
    ("blob1_mibs", "warm 256 MiB blob, 1 stream (MiB/s)", 0, [WHARF, STATIC, NGCACHE, REGPROXY], (WHARF, STATIC), ("ge", 1.0)),
    ("blob8_mibs", "warm 256 MiB blob, 8 streams (MiB/s, aggregate)", 0, [WHARF, STATIC, NGCACHE, REGPROXY], (WHARF, STATIC), ("ge", 1.0)),
    ("blob64_mibs", "warm 256 MiB blob, 64 streams (MiB/s, aggregate)", 0, [WHARF, STATIC, NGCACHE, REGPROXY], (WHARF, STATIC), ("ge", 1.0)),
    ("blob1_cpu", "server CPU per GiB served, 1 stream (s)", 3, [WHARF, STATIC, NGCACHE, REGPROXY], (WHARF, STATIC), ("le", 1.1)),
    ("blob8_cpu", "server CPU per GiB served, 8 streams (s)", 3, [WHARF, STATIC, NGCACHE, REGPROXY], (WHARF, STATIC), ("le", 1.1)),
    ("rss8", "peak RSS, 8 streams (MiB)", 1, [WHARF, STATIC, NGCACHE, REGPROXY], (WHARF, STATIC), None),
    ("rss64", "peak RSS, 64 streams (MiB)", 1, [WHARF, STATIC, NGCACHE, REGPROXY], None, ("abs_le", 100.0)),
    ("tag_rps", "warm manifest by tag, 32 conns (req/s)", 0, [WHARF, STATIC, NGCACHE, REGPROXY], (WHARF, NGCACHE), ("ge", 1.0)),
    ("tag_p99", "warm manifest by tag, p99 (ms)", 2, [WHARF, STATIC, NGCACHE, REGPROXY], (WHARF, NGCACHE), ("le", 1.5)),
    ("digest_rps", "warm manifest by digest, 32 conns (req/s)", 0, [WHARF, STATIC, NGCACHE, REGPROXY], (WHARF, NGCACHE), None),
    ("tag_p999", "warm manifest by tag, p99.9 (ms)", 2, [WHARF, STATIC, NGCACHE, REGPROXY], (WHARF, NGCACHE), None),
    ("digest_p99", "warm manifest by digest, p99 (ms)", 2, [WHARF, STATIC, NGCACHE, REGPROXY], (WHARF, NGCACHE), ("le", 1.5)),
    ("digest_p999", "warm manifest by digest, p99.9 (ms)", 2, [WHARF, STATIC, NGCACHE, REGPROXY], (WHARF, NGCACHE), None),
    ("pull_big", "cold pull, 256 MiB image, skopeo (s)", 2, [WHARF, NGCACHE, REGPROXY, ORIGIN], (WHARF, ORIGIN), ("le", 1.1)),
    ("pull_small", "cold pull, many-small-layers image, skopeo (s)", 2, [WHARF, NGCACHE, REGPROXY, ORIGIN], (WHARF, ORIGIN), ("le", 1.1)),
    ("cold1_s", "1 cold GET of the 256 MiB blob (s)", 2, [WHARF, NGCACHE, REGPROXY], None, None),
    ("herd_s", "16 concurrent cold GETs of it, wall (s)", 2, [WHARF, NGCACHE, REGPROXY], ("self", "cold1_s"), ("le", 1.2)),
    ("herd_origin_gets", "  origin GETs of that blob for the 16", 0, [WHARF, NGCACHE, REGPROXY], None, ("abs_eq", 1)),
    ("herd_warm_s", "  for scale: 16 concurrent warm GETs, wall (s)", 2, [WHARF, STATIC], (WHARF, STATIC), None),
    # The delivery floor: 16 cold GETs cannot end before 16 warm ones would.
    ("herd_s", "  16 cold GETs against 16 warm GETs (wharf)", 2, [], ("self", "herd_warm_s"), ("le", 1.2)),
    ("cold_range_ms", "last MiB of the cold 256 MiB blob, one Range GET (ms)", 1, [WHARF, NGCACHE, REGPROXY, ORIGIN], (WHARF, ORIGIN), None),
    ("cold_range_wait_ms", "  the same with registry.cold_ranges = \"wait\" (ms)", 1, [WHARF], None, None),
    ("go_cold", "go mod download, cold (s)", 2, [WHARF, STATIC, NGCACHE], (WHARF, STATIC), None),
    ("go_warm", "go mod download, warm (s)", 2, [WHARF, STATIC, NGCACHE], (WHARF, STATIC), ("le", 1.1)),
    ("go_cold_verified", "go mod download, cold, verified (s)", 2, [WHARF, STATIC, NGCACHE], (WHARF, STATIC), ("le", 1.15)),
]

# --baseline: this build against another build of wharf, same run, same load, interleaved.
BASELINE_COLUMNS = [
    (WHARF, "wharf (this build)"),
    (BASE, "wharf (baseline)"),
]

BASELINE_ROWS = [
    ("blob1_mibs", "warm 256 MiB blob, 1 stream (MiB/s)", 0, [WHARF, BASE], (WHARF, BASE), ("ge", 0.97)),
    ("blob8_mibs", "warm 256 MiB blob, 8 streams (MiB/s, aggregate)", 0, [WHARF, BASE], (WHARF, BASE), ("ge", 0.97)),
    ("blob1_cpu", "server CPU per GiB served, 1 stream (s)", 3, [WHARF, BASE], (WHARF, BASE), None),
    ("blob8_cpu", "server CPU per GiB served, 8 streams (s)", 3, [WHARF, BASE], (WHARF, BASE), None),
    ("tag_rps", "warm manifest by tag, 32 conns (req/s)", 0, [WHARF, BASE], (WHARF, BASE), ("ge", 0.97)),
    ("tag_p99", "warm manifest by tag, p99 (ms)", 2, [WHARF, BASE], (WHARF, BASE), None),
    ("digest_rps", "warm manifest by digest, 32 conns (req/s)", 0, [WHARF, BASE], (WHARF, BASE), ("ge", 0.97)),
    ("digest_p99", "warm manifest by digest, p99 (ms)", 2, [WHARF, BASE], (WHARF, BASE), None),
]

TLS_COLUMNS = [
    (WHARF, "wharf (rustls)"),
    (STATIC, "nginx static (ssl, sendfile)"),
]

TLS_ROWS = [
    ("tls_blob1_mibs", "TLS: warm 256 MiB blob, 1 stream (MiB/s)", 0, [WHARF, STATIC], (WHARF, STATIC), ("ge", 0.9)),
    ("tls_blob8_mibs", "TLS: warm 256 MiB blob, 8 streams (MiB/s, aggregate)", 0, [WHARF, STATIC], (WHARF, STATIC), ("ge", 0.9)),
    ("tls_blob1_cpu", "TLS: server CPU per GiB served, 1 stream (s)", 3, [WHARF, STATIC], (WHARF, STATIC), None),
    ("tls_blob8_cpu", "TLS: server CPU per GiB served, 8 streams (s)", 3, [WHARF, STATIC], (WHARF, STATIC), None),
    ("tls_tag_rps", "TLS: warm manifest by tag, 32 conns (req/s)", 0, [WHARF, STATIC], (WHARF, STATIC), ("ge", 0.9)),
    ("tls_tag_p99", "TLS: warm manifest by tag, p99 (ms)", 2, [WHARF, STATIC], (WHARF, STATIC), ("le", 1.5)),
]

# The shared tier's table. Its wharf column is a fresh replica's tier hit, then the three-replica
# fleet (aggregate and cold rows); the disk column is that fresh replica's next GET.
SHARED_COLUMNS = [
    (WHARF, "wharf"),
    (STORE, "Garage direct (S3 GET)"),
    (DISK, "wharf, next GET (local disk)"),
    (STATIC, "nginx static (sendfile)"),
]


def shared_rows():
    return [
        ("tier_pinned_mibs", "tier hit: 256 MiB blob, first GET on a fresh replica, store on a CPU of its own (MiB/s)", 0, [WHARF, STORE], (WHARF, STORE), ("ge", 0.9)),
        ("tier_pinned_first_ms", "tier hit: time to first byte, store on a CPU of its own (ms)", 2, [WHARF, STORE], (WHARF, STORE), ("le", 1.5)),
        ("tier_pinned_store_busy", "  the store's CPU busy during that GET (%)", 0, [WHARF, STORE], None, None),
        ("tier_pinned_other_busy", "  the other CPU (replica and client; Garage column: client) busy (%)", 0, [WHARF, STORE], None, None),
        ("tier_mibs", "tier hit, store, replica and client on the same 2 cores (MiB/s)", 0, [WHARF, STORE, DISK, STATIC], (WHARF, STORE), None),
        ("tier_first_ms", "  time to first byte, all on the same cores (ms)", 2, [WHARF, STORE, DISK, STATIC], (WHARF, STORE), None),
        ("tier_cpu", "  CPU per GiB served, replica + store (s)", 3, [WHARF, STORE, DISK, STATIC], (WHARF, STORE), None),
        ("tier_next_hits", "  next GET on that replica answered X-Cache: HIT (of %d)" % ARGS.reps, 0, [WHARF], None, ("abs_eq", ARGS.reps)),
        ("tier_origin_gets", "  origin GETs for those %d tier hits" % ARGS.reps, 0, [WHARF], None, ("abs_eq", 0)),
        ("tier_rss", "peak RSS of that replica, tier hit and next GET (MiB)", 1, [WHARF, DISK], None, ("abs_le", 100.0)),
        ("agg_one_mibs", "warm 256 MiB blob, 8 streams on one replica (MiB/s, aggregate)", 0, [WHARF], None, None),
        ("agg_three_mibs", "warm 256 MiB blob, 8 streams over 3 replicas (MiB/s, aggregate)", 0, [WHARF], ("self", "agg_one_mibs"), None),
        ("xcold1_s", "1 cold GET of the 256 MiB blob, one replica (s)", 2, [WHARF], None, None),
        ("xherd_s", "3 replicas × 8 concurrent cold GETs of it, wall (s)", 2, [WHARF], ("self", "xcold1_s"), None),
        ("xherd_origin_gets", "  origin GETs of that blob for the 24", 0, [WHARF], None, ("abs_eq", 1)),
        ("xherd_warm_s", "  for scale: 24 concurrent warm GETs over the 3, wall (s)", 2, [WHARF], None, None),
        ("xherd_s", "  24 cold GETs against 24 warm GETs (3 replicas)", 2, [], ("self", "xherd_warm_s"), None),
    ]


SELF_RATIO = {
    "cold1_s": "1 cold GET",
    "herd_warm_s": "16 warm GETs",
    "agg_one_mibs": "8 streams on one",
    "xcold1_s": "1 cold GET",
    "xherd_warm_s": "24 warm GETs",
}
SHORT = {
    WHARF: "wharf",
    STATIC: "static",
    NGCACHE: "proxy_cache",
    REGPROXY: "registry proxy",
    ORIGIN: "direct",
    STORE: "Garage direct",
    DISK: "disk hit",
    BASE: "baseline",
}


def table(res, rows=None, columns=COLUMNS, paired=False):
    """The markdown table of `rows` (default ROWS) over `columns`, and each target's verdict;
    empty text when no row was measured. `paired`: a ratio is the median of the per-repetition
    ratios (two builds measured back to back each repetition, so a load that drifts during the
    run cancels out), not the ratio of the medians."""
    head = "| measurement | " + " | ".join(label for _, label in columns) + " | wharf / peer | target | met |"
    sep = "|---|" + "---:|" * len(columns) + "---:|---|---|"
    lines = [head, sep]
    verdicts = {}
    for metric, label, digits, servers, ratio_spec, target in rows or ROWS:
        if metric not in res.values:
            continue
        label = label.replace("256 MiB", "%d MiB" % ARGS.big_mib).replace("16 concurrent", "%d concurrent" % ARGS.herd)
        label = label.replace("the 16", "the %d" % ARGS.herd).replace("scale: 16", "scale: %d" % ARGS.herd)
        label = label.replace("16 cold GETs against 16 warm", "%d cold GETs against %d warm" % (ARGS.herd, ARGS.herd))
        cells = []
        for server, _ in columns:
            cells.append(fmt(res.median(metric, server), digits) if server in servers else "")
        wharf = res.median(metric, WHARF)
        ratio_text, ratio = "", None
        if ratio_spec and ratio_spec[0] == "self":
            other = res.median(ratio_spec[1], WHARF)
            if wharf is not None and other:
                ratio = wharf / other
                ratio_text = "%.2f× its %s" % (ratio, SELF_RATIO[ratio_spec[1]])
        elif ratio_spec:
            other = res.median(metric, ratio_spec[1])
            mine, theirs = (res.values.get(metric, {}).get(s) or [] for s in (WHARF, ratio_spec[1]))
            if paired and mine and len(mine) == len(theirs) and all(theirs):
                ratio = statistics.median(a / b for a, b in zip(mine, theirs))
                ratio_text = "%.2f× %s" % (ratio, SHORT[ratio_spec[1]])
            elif wharf is not None and other:
                ratio = wharf / other
                ratio_text = "%.2f× %s" % (ratio, SHORT[ratio_spec[1]])
        target_text, met = "", ""
        if target:
            kind, bound = target
            shown = "%.1f" % bound if round(bound, 1) == bound else "%g" % bound
            if kind == "ge":
                target_text, ok = "≥ %s×" % shown, ratio is not None and ratio >= bound
            elif kind == "le":
                target_text, ok = "≤ %s×" % shown, ratio is not None and ratio <= bound
            elif kind == "abs_le":
                target_text, ok = "< %g" % bound, wharf is not None and wharf < bound
            else:
                target_text, ok = "= %g" % bound, wharf is not None and wharf == bound
            met = "yes" if ok else "**no**"
            key = metric + ("/" + ratio_spec[1] if ratio_spec and ratio_spec[0] == "self" else "")
            verdicts[key] = ok
        lines.append("| %s | %s | %s | %s | %s |" % (label, " | ".join(cells), ratio_text, target_text, met))
    if len(lines) == 2:
        return "", verdicts
    return "\n".join(lines), verdicts


def ktls_available():
    """Whether this kernel offers kernel TLS (the `tls` upper-layer protocol)."""
    try:
        with open("/proc/sys/net/ipv4/tcp_available_ulp") as f:
            return "tls" in f.read().split()
    except OSError:
        return False


def machine():
    model = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kib = int(f.readline().split()[1])
    return "%d cores (%s), %.1f GiB RAM, Linux %s" % (os.cpu_count(), model, mem_kib / 1024 / 1024, platform.release())


PAGE_REPORTING = "/sys/module/page_reporting/parameters/page_reporting_order"
# One past the largest page order: the kernel then reports no free page to the host.
PAGE_REPORTING_OFF = "11"


def page_reporting():
    """The order of free pages this VM hands back to its host (a virtio balloon's free page
    reporting), or None where nothing reports (no balloon offering it, or no such kernel)."""
    balloons = glob.glob("/sys/bus/virtio/devices/*")
    reporting = False
    for dev in balloons:
        try:
            with open(os.path.join(dev, "device")) as f:
                balloon = f.read().strip() == "0x0005"
            with open(os.path.join(dev, "features")) as f:
                features = f.read().strip()
        except OSError:
            continue
        # Feature bit 5: VIRTIO_BALLOON_F_REPORTING (the string is bit 0 first).
        reporting |= balloon and len(features) > 5 and features[5] == "1"
    if not reporting:
        return None
    try:
        with open(PAGE_REPORTING) as f:
            return f.read().strip()
    except OSError:
        return None


def hold_page_reporting():
    """Stops free page reporting for the run and touches free memory once, so the page cache a
    fill writes is memory the host already backs (restored by `release_page_reporting`). Where
    the host takes freed pages back, the next write into them faults on the host: 256 MiB written
    to a new file took 1.3-1.9 s of system time instead of 0.12 s here, which falls on whoever
    writes fresh page cache (fills, the go command) and not on a warm hit."""
    before = ARGS.page_reporting
    if before is None:
        log("free page reporting: nothing reports free pages here; nothing to hold")
        return
    try:
        with open(PAGE_REPORTING, "w") as f:
            f.write(PAGE_REPORTING_OFF)
    except OSError as e:
        sys.exit("bench.py: cannot hold free page reporting off (%s): --hold-page-reporting needs root" % e)
    ARGS.reporting_restore = before  # from here on, restored whatever happens
    with open("/proc/meminfo") as f:
        free_kib = next(int(line.split()[1]) for line in f if line.startswith("MemFree:"))
    chunk = 64 << 20
    count = max(0, (free_kib * 1024 - (2 << 30)) // chunk)
    log("free page reporting held off (was order %s); touching %.1f GiB of free memory once" % (before, count * chunk / (1 << 30)))
    held = [bytearray(b"\x01") * chunk for _ in range(count)]
    del held


def reporting_note():
    """What the table's header says of free page reporting."""
    if ARGS.page_reporting is None:
        return ""
    if ARGS.page_reporting == PAGE_REPORTING_OFF:
        return " The VM's free page reporting was already off before the run (order %s)." % PAGE_REPORTING_OFF
    if ARGS.hold_page_reporting:
        return " The VM's free page reporting was held off for the run (`--hold-page-reporting`; it was order %s)." % ARGS.page_reporting
    return " The VM reports free pages of order %s to its host: page cache written after an idle moment faults on the host (`--hold-page-reporting` holds it off)." % ARGS.page_reporting


def release_page_reporting():
    if ARGS.reporting_restore is not None:
        with open(PAGE_REPORTING, "w") as f:
            f.write(ARGS.reporting_restore)


def versions():
    def first_line(argv):
        try:
            p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=clean_env(), timeout=30)
            return p.stdout.decode().strip().splitlines()[0]
        except Exception:
            return "?"

    def word(text, n):
        parts = text.split()
        return parts[n] if len(parts) > n else "?"

    found = {
        "wharf": ARGS.wharf_version,
        "nginx": first_line([ARGS.nginx, "-v"]).split("/")[-1],
        "docker-registry": word(first_line([ARGS.registry, "--version"]), 2),
        "skopeo": word(first_line([ARGS.skopeo, "--version"]), 2),
        "go": word(first_line([ARGS.go, "version"]), 2),
        "wrk": word(first_line([ARGS.wrk, "-v"]), 1),
    }
    if ARGS.garage:
        found["garage"] = word(first_line([ARGS.garage, "--version"]), 1).split(":")[-1]
    return found


# ---------------------------------------------------------------------------------------------
# --profile: where wharf's CPU goes, per scenario, with perf


class Perf:
    """`perf record` attached to one process until stopped; then flat and caller reports."""

    def __init__(self, name, pid):
        self.name = name
        self.data = os.path.join(ARGS.profile, name + ".perf.data")
        self.proc = subprocess.Popen(
            [ARGS.perf, "record", "-q", "-e", "cpu-clock", "-F", "499", "--call-graph", "dwarf,16384", "-p", str(pid), "-o", self.data],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=open(os.path.join(ARGS.profile, name + ".perf.log"), "wb"),
            env=clean_env(),
            start_new_session=True,
        )
        time.sleep(1.0)  # perf needs a moment to attach

    def stop(self):
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(timeout=120)
        for kind, args in (
            # Self time per function, and per binary (kernel, wharf, libc).
            ("flat", ["--no-children", "--sort", "dso,symbol", "-g", "none", "--percent-limit", "0.3"]),
            ("dso", ["--no-children", "--sort", "dso", "-g", "none"]),
            # Inclusive time (the function and everything it calls).
            ("inclusive", ["--children", "--sort", "symbol", "-g", "none", "--percent-limit", "1"]),
        ):
            argv = [ARGS.perf, "report", "-i", self.data, "--stdio", "--no-inline"] + args
            out = run(argv, timeout=900, check=False).stdout
            with open(os.path.join(ARGS.profile, "%s.%s.txt" % (self.name, kind)), "wb") as f:
                f.write(out)
        log("profile %s: %s" % (self.name, os.path.join(ARGS.profile, self.name + ".flat.txt")))


def profile(origin, static, wharf, garage=None):
    """Runs each wharf scenario once more under perf (after the table, so it skews nothing);
    with `garage`, a fresh replica's tier hit too."""
    os.makedirs(ARGS.profile, exist_ok=True)
    images = ARGS.meta["images"]
    big = images["big"]
    size = big["layer"]["size"]

    if garage:
        # Pinned as the measured row is: the store on one CPU, the replica and the client on
        # the other.
        everything = os.sched_getaffinity(0)
        store_cpu, other_cpu = sorted(everything)[:2]
        pin(garage.server, {store_cpu})
        b = start_wharf(origin, static, "wharf-b-profile", garage.shared_table("bprofile"))
        try:
            pin(b, {other_cpu})
            p = Perf("tier-hit", b.proc.pid)
            fetch_urls(["http://127.0.0.1:%d%s" % (b.port, blob_path(big))], 1, size, cpu=other_cpu)
            p.stop()
        finally:
            b.stop()
            rmtree(b.dir)
            pin(garage.server, everything)

    p = Perf("warm-blob-1-stream", wharf.proc.pid)
    fetch(wharf.port, blob_path(big), 1, size, max(4, 2048 // ARGS.big_mib))
    p.stop()
    p = Perf("warm-blob-8-streams", wharf.proc.pid)
    fetch(wharf.port, blob_path(big), 8, size, max(1, 1024 // ARGS.big_mib))
    p.stop()
    p = Perf("warm-manifest-by-tag", wharf.proc.pid)
    wrk(wharf.port, "/v2/%s/manifests/%s" % (images["multi"]["repo"], images["multi"]["tag"]))
    p.stop()
    p = Perf("warm-manifest-by-digest", wharf.proc.pid)
    wrk(wharf.port, "/v2/%s/manifests/%s" % (images["multi"]["repo"], images["multi"]["manifest"]["digest"]))
    p.stop()
    for name, streams in (("cold-blob-1-get", 1), ("cold-blob-%d-gets" % ARGS.herd, ARGS.herd)):
        cold = start_wharf(origin, static, "wharf-profile")
        try:
            p = Perf(name, cold.proc.pid)
            fetch(cold.port, blob_path(big), streams, size)
            p.stop()
        finally:
            cold.stop()
            rmtree(cold.dir)
    cold = start_wharf(origin, static, "wharf-profile")
    try:
        p = Perf("cold-pull-small-layers", cold.proc.pid)
        cold_pull(cold.port, images["small"])
        p.stop()
    finally:
        cold.stop()
        rmtree(cold.dir)


# ---------------------------------------------------------------------------------------------


def main():
    global ARGS
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--command", default="benches/compare.sh")
    ap.add_argument("--wharf", required=True)
    ap.add_argument("--wharf-version", default="?")
    ap.add_argument("--wharf-log-level", default="info")
    ap.add_argument("--fetch", required=True)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--reps64", type=int, default=3)
    ap.add_argument("--big-mib", type=int, default=256)
    ap.add_argument("--repeat1", type=int, default=4, help="sequential GETs per 1-stream sample")
    ap.add_argument("--herd", type=int, default=16)
    ap.add_argument("--wrk-seconds", type=int, default=4)
    ap.add_argument("--wrk-threads", type=int, default=2)
    ap.add_argument("--wrk-connections", type=int, default=32)
    ap.add_argument("--nginx-workers", default="auto")
    ap.add_argument("--only", default="", help="comma-separated subset: blob,rss64,manifest,pull,herd,range,go,tls,shared")
    ap.add_argument("--garage", default="", help="the garage binary (S3 store) for the shared part; empty: skip it")
    ap.add_argument("--profile", default="", help="after the table, profile wharf with perf into this directory")
    ap.add_argument("--perf", default="perf")
    ap.add_argument("--baseline", default="", help="another wharf binary, measured beside this one in the warm blob and manifest rows")
    ap.add_argument("--baseline-version", default="?")
    ap.add_argument("--hold-page-reporting", action="store_true", help="hold a VM's free page reporting off for the run")
    ap.add_argument("--gosumdb", default="", help="the tests' checksum-database helper (tests/support/gosumdb), for the verified Go row")
    for tool in ("nginx", "registry", "skopeo", "go", "wrk"):
        ap.add_argument("--" + tool, default=tool if tool != "registry" else "docker-registry")
    ARGS = ap.parse_args()
    tools = ["nginx", "registry", "skopeo", "go", "wrk", "wharf", "fetch"] + (["perf"] if ARGS.profile else [])
    for tool in tools:
        path = shutil.which(getattr(ARGS, tool))
        if not path:
            sys.exit("bench.py: %s not found" % getattr(ARGS, tool))
        setattr(ARGS, tool, path)
    with open(os.path.join(ARGS.data, "meta.json")) as f:
        ARGS.meta = json.load(f)
    if ARGS.garage:
        ARGS.garage = shutil.which(ARGS.garage) or sys.exit("bench.py: %s not found" % ARGS.garage)
    only = set(filter(None, ARGS.only.split(",")))
    if (not only or "go" in only) and not ARGS.gosumdb:
        sys.exit("bench.py: the Go part needs --gosumdb")
    want = lambda part: (not only or part in only) and (part != "shared" or ARGS.garage)  # noqa: E731

    ARGS.load_before = os.getloadavg()
    if ARGS.load_before[0] > 0.5:
        log("warning: load average %.2f before the run: other work on this machine will skew the numbers" % ARGS.load_before[0])
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    ARGS.page_reporting = page_reporting()
    ARGS.reporting_restore = None
    if ARGS.page_reporting not in (None, PAGE_REPORTING_OFF) and not ARGS.hold_page_reporting:
        log("warning: this VM reports free pages to its host (order %s): fills and other writers of fresh page cache pay host faults by timing luck; --hold-page-reporting holds it off" % ARGS.page_reporting)
    try:
        if ARGS.hold_page_reporting:
            hold_page_reporting()
        started = time.time()
        return bench(want, started)
    finally:
        stop_all()
        release_page_reporting()


def bench(want, started):
    images = ARGS.meta["images"]
    log("origin: docker-registry, pushing the generated images with skopeo")
    origin = Origin()
    for key in ("big", "small", "multi"):
        image = images[key]
        args = ["copy", "--preserve-digests", "--dest-tls-verify=false"]
        if key == "multi":
            args.append("--all")
        args += ["oci:%s:%s" % (os.path.join(ARGS.data, "oci"), key), "docker://127.0.0.1:%d/%s:%s" % (origin.port, image["repo"], image["tag"])]
        skopeo(args)

    log("peers and wharf")
    static = start_static(ARGS.meta)
    warm = {
        ORIGIN: origin,
        STATIC: static,
        NGCACHE: start_ngcache(origin, static),
        REGPROXY: start_regproxy(origin),
        WHARF: start_wharf(origin, static),
    }
    warm["origin"] = origin
    servers = [(name, warm[name]) for name in (WHARF, STATIC, NGCACHE, REGPROXY)]
    # The baseline build joins only the warm blob (1 and 8 streams) and manifest rows.
    with_base = list(servers)
    if ARGS.baseline:
        warm[BASE] = start_wharf(origin, static, "wharf-baseline", binary=ARGS.baseline)
        with_base.append((BASE, warm[BASE]))
    log("warming the caches")
    warm_up(origin, [(n, s) for n, s in with_base if n != STATIC], [images["big"]])
    for name, server in with_base:
        for ref in (images["multi"]["tag"], images["multi"]["manifest"]["digest"]):
            fetch(server.port, "/v2/%s/manifests/%s" % (images["multi"]["repo"], ref), 1, images["multi"]["manifest"]["size"], accept=MANIFEST_ACCEPT)
    if want("go"):
        for kind in (WHARF, NGCACHE):
            go_download(go_url(kind, warm))
        log("the checksum database of the Go tree")
        warm["sumdb"] = SumDb()
    if want("tls"):
        log("TLS: wharf with [tls] and nginx with ssl on one certificate")
        tls_servers = prepare_tls(origin, static, images)
    if want("shared"):
        log("the shared tier: Garage, replica A filling the bucket, a fleet of three")
        garage = Garage()
        fleet = prepare_shared(origin, static, garage)

    res = Results()
    for rep in range(ARGS.reps):
        log("repetition %d of %d" % (rep + 1, ARGS.reps))
        order = rotate(servers, rep)
        order_base = rotate(with_base, rep)
        big = images["big"]
        if want("blob"):
            measure_blob(res, order_base, big, 1, ARGS.repeat1, "1")
            measure_blob(res, order_base, big, 8, 1, "8", rss_metric="rss8")
        if want("rss64") and rep < ARGS.reps64:
            measure_blob(res, order, big, 64, 1, "64", rss_metric="rss64")
        if want("manifest"):
            measure_manifests(res, order_base, images["multi"])
        if want("pull"):
            measure_cold_pulls(res, rep, origin, static)
        if want("herd"):
            measure_herd(res, rep, origin, static)
            measure_herd_warm(res, order)
        if want("herd") or want("range"):
            measure_cold_range(res, rep, origin, static)
        if want("go"):
            measure_go(res, rep, static, warm)
        if want("tls"):
            measure_tls(res, rotate(tls_servers, rep), images["big"], images["multi"])
        if want("shared"):
            measure_tier_hit(res, rep, origin, static, garage)
            if len(os.sched_getaffinity(0)) >= 2:
                measure_tier_hit_pinned(res, rep, origin, static, garage)
            measure_fleet(res, rep, fleet)
            measure_cross_herd(res, rep, origin, static, garage)
        log("  %.0f s so far" % (time.time() - started))

    # Counted over all repetitions: every one must be a disk hit, none may reach the origin.
    for per_rep, total in (("tier_next_hit", "tier_next_hits"), ("tier_origin_get", "tier_origin_gets")):
        if per_rep in res.values:
            res.values[total] = {WHARF: [sum(res.values[per_rep][WHARF])]}
    text, verdicts = table(res)
    shared_text, shared_verdicts = table(res, shared_rows(), SHARED_COLUMNS)
    verdicts.update(shared_verdicts)
    tls_text, tls_verdicts = table(res, TLS_ROWS, TLS_COLUMNS)
    verdicts.update(tls_verdicts)
    base_text = ""
    if ARGS.baseline:
        base_text, base_verdicts = table(res, BASELINE_ROWS, BASELINE_COLUMNS, paired=True)
        verdicts.update({"baseline/" + k: ok for k, ok in base_verdicts.items()})
    go_bytes = 0
    for root, _dirs, files in os.walk(os.path.join(ARGS.data, "go")):
        go_bytes += sum(os.path.getsize(os.path.join(root, name)) for name in files if name.endswith(".zip"))
    v = versions()
    small = images["small"]
    doc = [
        "## wharf vs. its peers on loopback",
        "",
        "%s, %s. Command: `%s`. Medians of %d repetitions (64 streams: %d), servers interleaved, order rotated each repetition; %.1f min in all; 1-min load average before the run %.2f.%s"
        % (
            datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            machine(),
            ARGS.command,
            ARGS.reps,
            min(ARGS.reps, ARGS.reps64),
            (time.time() - started) / 60,
            ARGS.load_before[0],
            reporting_note(),
        ),
        "",
    ]
    if text:
        doc += [text, ""]
    if base_text:
        doc += [
            "### This build against a baseline build",
            "",
            "wharf %s against wharf %s, both on the same origin and config, measured in the same repetitions as the table above (interleaved, order rotated); a ratio is the median of the per-repetition ratios; the target is at most 3%% cost."
            % (ARGS.wharf_version, ARGS.baseline_version),
            "",
            base_text,
            "",
        ]
    if tls_text:
        doc += ["### TLS", "", tls_text, ""]
    if shared_text:
        doc += ["### Shared tier", "", shared_text, ""]
    doc += ["Versions: " + ", ".join("%s %s" % (k, val) for k, val in v.items()) + "."]
    if text:
        doc += [
            "",
            "Setup: the origin is Debian's docker-registry (filesystem storage) holding a %d MiB-layer image, a %d-layer image (%.1f MiB of 4 KiB–1 MiB layers) and a two-platform index (the manifest rows use the index); the Go origin is nginx serving a generated module tree (%d modules, %.1f MiB of zips). "
            "Blob rows: the fetch client (Go, 1 MiB reads, HTTP/1.1) takes the layer %d times in a row for 1 stream, once per stream otherwise; CPU is utime+stime of the server's processes (nginx: all workers) per GiB delivered; peak RSS is VmHWM summed over them after resetting it (`clear_refs` 5). "
            "Manifest rows: wrk, %d threads, %d connections, %d s, `Accept` with all four manifest types. "
            "Cold rows start each proxy on an empty store (wharf: new data dir; nginx: new cache; docker-registry proxy: new storage); cold pulls are `skopeo copy docker://… dir:…`. "
            "The docker-registry proxy asks its origin for every tag on every request, by design. Go rows: `go mod download` with an empty GOMODCACHE and GOPATH each time, GOSUMDB=off, wharf with `go.verify = false`; the nginx static column is also the direct origin for Go. Nothing is removed during the Go rows, and they start a minute after the last removal: ext4 without a journal does not reuse an inode number freed in the last minute, and past thousands of them every file creation is slow (the same download took 0.35 s or 1.0 s by that alone). "
            "The verified row turns checking on everywhere, against a local checksum database holding every module version of the tree (tests/support/gosumdb, golang.org/x/mod's own server and hashes): wharf starts on an empty data dir each time with `go.verify = true` and that database as its only `[[go.sumdb]]`, and the go command is set up as README says (`GOPROXY` wharf, `GOSUMDB` the key alone, so it reads the database through wharf); for nginx, static or proxy_cache (a new cache each time), the go command reads the database itself (`GOSUMDB=\"<key> <url>\"`). GONOSUMDB is unset in all three. "
            "Ratios are wharf's median over the named peer's median."
            % (
                ARGS.big_mib,
                small["layers"],
                small["blobs"] / MIB,
                len(ARGS.meta["go"]["modules"]),
                go_bytes / MIB,
                ARGS.repeat1,
                ARGS.wrk_threads,
                ARGS.wrk_connections,
                ARGS.wrk_seconds,
            ),
        ]
    if tls_text:
        doc += [
            "",
            "TLS: a second wharf with `[tls]` (rustls with the aws-lc-rs provider) and a second nginx static with `ssl` (OpenSSL), both on one self-signed P-256 certificate, TLS 1.3, HTTP/1.1; wharf warmed over HTTPS first. "
            "The fetch client and wrk as above, over https; the kernel here %s kernel TLS, so neither server can use sendfile under TLS."
            % ("offers" if ktls_available() else "does not offer")
        ]
    if shared_text:
        doc += [
            "",
            "Shared tier: the origin is Debian's docker-registry holding a %d MiB-layer image; Garage is a single-node S3 store on loopback (one bucket, default settings); every wharf replica has its own port and empty data dir, and `[shared]` on that bucket with `sync_interval = \"200ms\"`. "
            "Tier hit: replica A fills the layer from the origin and uploads it, and the driver waits until the bucket holds it and A's `/healthz` shows `shared.pending` 0; each repetition then starts a fresh replica B, without `[peers]`, whose first GET of the layer comes from the bucket and whose next GET from its own disk. "
            "The Garage column is the same fetch client getting the object (`blobs/sha256/<hex>`) from the store itself, signed with SigV4; one stream, one GET in every column; time to first byte is until the first body byte; CPU is utime+stime per GiB delivered of B and Garage together (in the Garage column, Garage; in the nginx column, nginx); peak RSS is B's VmHWM, reset before each of its two GETs. "
            "The rows with the store on a CPU of its own (the targets; %d samples of each column per repetition, a fresh replica each) repeat the first GET with Garage's threads on CPU 0 and the replica (a fresh one each time) and the client on CPU 1, against the client on CPU 1 getting the object from Garage: a store runs on machines of its own, and on this machine's two cores the store, the replica and the client otherwise take CPU from each other (the CPU row shows the sum). "
            "Fleet rows: three replicas with `[peers]` (members, advertise, a shared secret) on the same bucket, each holding the layer on its disk; 8 streams spread over them (3 + 3 + 2) against 8 streams on one of them. "
            "Cold rows start new replicas under a new key prefix of the bucket each time, so the bucket is cold too: three with peers taking 8 concurrent GETs each, against one without peers taking one GET. "
            "Replicas, store and clients share this machine's %d cores: spreading streams over replicas adds no CPU here, so the fleet rows say nothing about scaling across machines."
            % (ARGS.big_mib, PINNED_SAMPLES, os.cpu_count())
        ]
    out = "\n".join(doc) + "\n"
    with open(ARGS.out, "w") as f:
        f.write(out)
    with open(os.path.splitext(ARGS.out)[0] + ".json", "w") as f:
        json.dump({"values": res.values, "verdicts": verdicts, "versions": v}, f, indent=1)
    print(out)
    sys.stdout.flush()
    if ARGS.profile:
        profile(origin, static, warm[WHARF], garage if want("shared") else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
