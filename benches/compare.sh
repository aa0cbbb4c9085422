#!/usr/bin/env bash
# benches/compare.sh: wharf against its peers, on this machine, over loopback only.
#
# Usage:
#   benches/compare.sh [--quick] [--reps N] [--out FILE] [--keep] [--no-install] [--only PARTS]
#                      [--baseline REV] [--hold-page-reporting]
#
#   --quick        2 repetitions, a 64 MiB layer, fewer layers and modules, shorter wrk runs
#                  (about 4 minutes instead of about 14 on a quiet 2-core machine; the Go rows
#                  wait a minute per repetition for the file system, see bench.py `Trash`)
#   --reps N       repetitions (default 5; the 64-stream run does min(N, 3))
#   --out FILE     where the markdown table goes (default target/bench/compare-<UTC time>.md;
#                  the raw samples go next to it as .json)
#   --keep         keep the temporary directory (generated images, logs, server configs)
#   --no-install   never run apt-get or cargo install; fail with the package list if a tool is
#                  missing (a missing garage skips the shared part instead, unless --only names it)
#   --only PARTS   comma-separated subset of blob,rss64,manifest,pull,herd,range,go,tls,shared
#   --profile DIR  afterwards, run each wharf scenario once more under `perf record` (Debian
#                  package linux-perf) and write self-time, per-binary and inclusive reports
#                  (<scenario>.flat.txt, .dso.txt, .inclusive.txt) and perf.data to DIR;
#                  `--only profile` skips the measurements and only profiles
#   --baseline REV another build of wharf measured beside this one in the warm blob (1 and 8
#                  streams) and manifest rows, interleaved in the same repetitions, in a table of
#                  its own (what a change costs): a git revision, built in a temporary worktree
#                  (target dir target/baseline), or the path of a wharf binary
#   --hold-page-reporting
#                  on a VM whose kernel reports free pages to its host (a virtio balloon's free
#                  page reporting, /sys/module/page_reporting), hold it off for the run (root;
#                  restored at exit) and touch free memory once first (up to a minute). With it on,
#                  page cache written after an idle moment faults on the host: 256 MiB written
#                  to a new file takes 1.3-1.9 s instead of 0.12 s on the machines of the README's
#                  runs, which falls on fills and the go command's writes, not on warm hits. The
#                  table's header says which way the run went.
#
#   Environment: WHARF_BENCH_VERSION labels the wharf build in the table (default: git describe);
#   WHARF_BENCH_LOG_LEVEL is wharf's [log] level (default: info, one line per request).
#
# What it does, all on 127.0.0.1:
#   1. Checks for its tools and, as root, installs the missing Debian packages:
#        apt-get install nginx wrk docker-registry skopeo golang-go python3 curl openssl
#      and, for the Go part, golang-golang-x-mod-dev (golang.org/x/mod's sources, unless the Go
#      toolchain vendors a copy with the checksum-database server). (Rust/cargo must already be
#      there.) The shared part also needs Garage, an S3-compatible
#      store, on PATH or in cargo's bin directory; it is built when missing with
#        cargo install garage --version 2.5.0 --locked      (about 15 minutes on 2 cores)
#   2. cargo build --release; builds benches/lib/fetch.go (a small concurrent GET client) and,
#      for the Go part, the tests' checksum-database helper tests/support/gosumdb (GOPATH mode,
#      against golang.org/x/mod, as tests/support/gotools.rs builds it).
#   3. benches/lib/gen.py generates, deterministically: an OCI layout with a 256 MiB-layer image,
#      a many-small-layers image and a two-platform index (gzip "stored" layers, so skopeo keeps
#      the digests), and a Go module tree in GOPROXY layout plus a main module requiring it all.
#   4. benches/lib/bench.py starts the origin (Debian docker-registry, images pushed with skopeo),
#      nginx serving the same bytes as static files (sendfile; also the Go origin), nginx
#      proxy_cache in front of both origins, docker-registry in proxy mode, and wharf
#      (target/release/wharf serve, default_upstream = the origin, go.upstreams = the Go tree,
#      go.verify = false, egress.allow = ["127.0.0.1"]), and measures, interleaved and repeated:
#        - warm blob throughput, 1 / 8 / 64 streams, server CPU per GiB, peak RSS (VmHWM)
#        - warm manifest by tag and by digest, wrk --latency, 32 connections
#        - cold `skopeo copy` of whole images (fresh caches) vs. straight from the origin
#        - 1 and 16 concurrent cold GETs of the large layer, and the origin's GET count
#        - lazy pulling: one Range GET of the last MiB of the cold large layer (fresh caches;
#          wharf also with registry.cold_ranges = "wait") vs. straight from the origin
#        - `go mod download` of the module graph, cold and warm, empty GOMODCACHE each time
#        - the same cold, verified: a local checksum database (the gosumdb helper over the
#          generated modules' sources, so it records their real h1: hashes); a fresh wharf with
#          go.verify = true and it as the one [[go.sumdb]], its go command set up as README says
#          (GOSUMDB the key alone: it reads the database through wharf), against nginx static
#          and a fresh nginx proxy_cache with the go command reading the database itself
#          (GOSUMDB="<key> <url>"); GONOSUMDB unset
#        - TLS: a second wharf with [tls] against nginx static with ssl, one self-signed
#          certificate: warm blob 1 and 8 streams, CPU per GiB, manifest by tag req/s and p99
#      and, for the shared tier (Garage as a single-node S3 store; replicas with [shared] on one
#      bucket, sync_interval 200ms, and [peers] for the fleet rows):
#        - tier hit: replica A fills the large layer and uploads it (waiting for /healthz
#          shared.pending == 0); a fresh replica B serves it from the bucket: MiB/s and time to
#          first byte against a signed GET straight from Garage, B's next GET (a local-disk hit,
#          X-Cache: HIT) and nginx; B's peak RSS; then the same first GET (three fresh
#          replicas per repetition) with Garage's threads on one CPU and the replica and the
#          client on another (the client alone there against Garage), as when the store has a
#          machine of its own: the targets' rows
#        - warm: 8 streams spread over three replicas against 8 streams on one
#        - cold: 3 new replicas x 8 concurrent GETs of the large layer (bucket cold too) against
#          one GET on one new replica, and the origin's GET count
#   5. Prints one markdown table (date, machine, medians, wharf / peer ratios, targets), and a
#      second one for the shared tier, and writes them to --out.
#
# Every process it starts runs in its own session and is stopped on exit, error or signal.
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; }

quick=0
reps=""
out=""
keep=0
install=1
only=""
profile=""
baseline=""
hold_reporting=()
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) quick=1 ;;
    --reps) reps="$2"; shift ;;
    --out) out="$2"; shift ;;
    --keep) keep=1 ;;
    --no-install) install=0 ;;
    --only) only="$2"; shift ;;
    --profile) profile="$2"; shift ;;
    --baseline) baseline="$2"; shift ;;
    --hold-page-reporting) hold_reporting=(--hold-page-reporting) ;;
    -h|--help) usage; exit 0 ;;
    *) echo "compare.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=lib/stop.sh
source "$root/benches/lib/stop.sh"
cd "$root"
command_line="benches/compare.sh"
[ "$quick" = 1 ] && command_line+=" --quick"
command_line+="${reps:+ --reps $reps}${only:+ --only $only}${baseline:+ --baseline $baseline}"
command_line+="${hold_reporting[*]:+ ${hold_reporting[*]}}"

# Nothing this script starts may go through a proxy: the only traffic is loopback.
unset http_proxy https_proxy HTTP_PROXY HTTPS_PROXY all_proxy ALL_PROXY ftp_proxy FTP_PROXY
export NO_PROXY=127.0.0.1,localhost no_proxy=127.0.0.1,localhost

# --- tools --------------------------------------------------------------------------------------
need=()
for pair in nginx:nginx wrk:wrk docker-registry:docker-registry skopeo:skopeo go:golang-go \
            python3:python3 curl:curl openssl:openssl; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair#*:}")
done
if [ -n "$profile" ]; then
  command -v perf >/dev/null 2>&1 || need+=(linux-perf)
fi
# The Go part's checksum database is the tests' helper, built against golang.org/x/mod.
want_go=0
if [ -z "$only" ] || [[ ",$only," == *,go,* ]]; then
  want_go=1
fi
xmod=""
find_xmod() {
  local dir
  for dir in /usr/share/gocode/src/golang.org/x/mod \
             "$(GOTOOLCHAIN=local go env GOROOT 2>/dev/null)/src/cmd/vendor/golang.org/x/mod"; do
    if [ -f "$dir/sumdb/test.go" ] && [ -f "$dir/zip/zip.go" ]; then
      xmod="$dir"
      return 0
    fi
  done
  return 1
}
if [ "$want_go" = 1 ] && ! find_xmod; then
  need+=(golang-golang-x-mod-dev)
fi
if [ "${#need[@]}" -gt 0 ]; then
  if [ "$install" = 1 ] && [ "$(id -u)" = 0 ]; then
    echo "compare.sh: installing ${need[*]}" >&2
    DEBIAN_FRONTEND=noninteractive apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}"
    # The nginx package may start a system-wide nginx; this script runs its own instances.
    [ "$want_go" = 0 ] || find_xmod \
      || { echo "compare.sh: golang.org/x/mod's sources not found after the install" >&2; exit 1; }
  else
    echo "compare.sh: missing tools; install them with: apt-get install -y ${need[*]}" >&2
    exit 1
  fi
fi
command -v cargo >/dev/null 2>&1 || { echo "compare.sh: cargo not found (install Rust)" >&2; exit 1; }

# The shared part needs Garage, which Debian does not package: cargo builds it.
garage_bin=""
if [ -z "$only" ] || [[ ",$only," == *,shared,* ]]; then
  cargo_bin="${CARGO_HOME:-$HOME/.cargo}/bin"
  garage_bin="$(command -v garage 2>/dev/null || true)"
  if [ -z "$garage_bin" ] && [ -x "$cargo_bin/garage" ]; then
    garage_bin="$cargo_bin/garage"
  fi
  build_garage="cargo install garage --version 2.5.0 --locked"
  if [ -z "$garage_bin" ] && [ "$install" = 1 ]; then
    echo "compare.sh: building garage for the shared part: $build_garage (about 15 minutes)" >&2
    $build_garage >&2
    garage_bin="$cargo_bin/garage"
  elif [ -z "$garage_bin" ] && [ -n "$only" ]; then
    echo "compare.sh: garage not found; build it once with: $build_garage" >&2
    exit 1
  elif [ -z "$garage_bin" ]; then
    echo "compare.sh: garage not found: SKIPPING the shared part (build it once with: $build_garage)" >&2
  fi
fi

# --- temporary directory and cleanup ------------------------------------------------------------
work="$(mktemp -d "${TMPDIR:-/tmp}/wharf-bench.XXXXXX")"
driver=""
cleanup() {
  local status=$?
  trap - EXIT INT TERM HUP
  stop_run "$work" "$driver"
  if [ "$keep" = 1 ]; then
    echo "compare.sh: kept $work" >&2
  else
    chmod -R u+w "$work" 2>/dev/null || true
    rm -rf "$work"
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

# --- build --------------------------------------------------------------------------------------
echo "compare.sh: cargo build --release" >&2
cargo build --release --locked --bin wharf >&2
target_dir="$(cargo metadata --format-version 1 --no-deps 2>/dev/null \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
wharf_bin="$target_dir/release/wharf"
wharf_version="${WHARF_BENCH_VERSION:-$(git describe --always --dirty 2>/dev/null || echo unknown)}"

baseline_bin=""
baseline_version=""
if [ -n "$baseline" ] && [ -x "$baseline" ] && [ -f "$baseline" ]; then
  baseline_bin="$(cd "$(dirname "$baseline")" && pwd)/$(basename "$baseline")"
  baseline_version="$("$baseline_bin" --version 2>/dev/null | head -n1 || echo "$baseline")"
elif [ -n "$baseline" ]; then
  rev="$(git rev-parse --verify --quiet "$baseline^{commit}")" \
    || { echo "compare.sh: --baseline $baseline is neither a wharf binary nor a git revision" >&2; exit 2; }
  baseline_version="$(git describe --always "$rev")"
  echo "compare.sh: building the baseline $baseline_version in a temporary worktree" >&2
  git worktree add --detach --quiet "$work/baseline-src" "$rev"
  (cd "$work/baseline-src" && CARGO_TARGET_DIR="$target_dir/baseline" \
    cargo build --release --locked --bin wharf >&2)
  git worktree remove --force "$work/baseline-src"
  baseline_bin="$target_dir/baseline/release/wharf"
fi

mkdir -p "$work/bin"
GOTOOLCHAIN=local GO111MODULE=off GOFLAGS= GOPROXY=off \
  go build -o "$work/bin/fetch" "$root/benches/lib/fetch.go"
gosumdb_bin=""
if [ "$want_go" = 1 ]; then
  # As tests/support/gotools.rs does it: GOPATH mode, x/mod's non-test sources copied next to
  # the helper's main package.
  gosrc="$work/gosumdb-build/src"
  mkdir -p "$gosrc/golang.org/x" "$gosrc/wharf-gosumdb"
  (cd "$xmod/.." && find mod -name testdata -prune -o -name '*.go' ! -name '*_test.go' -print0 \
    | xargs -0 cp --parents -t "$gosrc/golang.org/x")
  cp "$root/tests/support/gosumdb/main.go" "$gosrc/wharf-gosumdb/"
  (cd "$gosrc/wharf-gosumdb" && GOTOOLCHAIN=local GO111MODULE=off GOFLAGS= GOPROXY=off \
    GOPATH="$work/gosumdb-build" go build -o "$work/bin/gosumdb" .)
  gosumdb_bin="$work/bin/gosumdb"
fi

if [ -z "$out" ]; then
  mkdir -p "$target_dir/bench"
  out="$target_dir/bench/compare-$(date -u +%Y%m%dT%H%M%SZ).md"
fi
mkdir -p "$(dirname "$out")"

# --- sizes --------------------------------------------------------------------------------------
if [ "$quick" = 1 ]; then
  big_mib=64; small_layers=16; go_modules=20; go_big=4
  driver_args=(--reps "${reps:-2}" --reps64 1 --big-mib 64 --repeat1 8 --wrk-seconds 2)
else
  big_mib=256; small_layers=48; go_modules=60; go_big=8
  driver_args=(--reps "${reps:-5}" --reps64 3 --big-mib 256 --repeat1 4 --wrk-seconds 4)
fi

profile_args=()
if [ -n "$profile" ]; then
  mkdir -p "$profile"
  profile_args=(--profile "$(cd "$profile" && pwd)")
fi

echo "compare.sh: generating content in $work/data" >&2
python3 "$root/benches/lib/gen.py" "$work/data" --big-mib "$big_mib" \
  --small-layers "$small_layers" --go-modules "$go_modules" --go-big-mib "$go_big"

python3 "$root/benches/lib/bench.py" \
  --work "$work" --data "$work/data" --out "$out" --command "$command_line" \
  --wharf "$wharf_bin" --wharf-version "$wharf_version" --fetch "$work/bin/fetch" \
  --only "$only" --garage "$garage_bin" --wharf-log-level "${WHARF_BENCH_LOG_LEVEL:-info}" \
  --baseline "$baseline_bin" --baseline-version "$baseline_version" --gosumdb "$gosumdb_bin" \
  "${profile_args[@]}" "${hold_reporting[@]}" "${driver_args[@]}" &
driver=$!
wait "$driver"
driver=""
echo "compare.sh: table written to $out" >&2
