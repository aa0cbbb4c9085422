#!/usr/bin/env bash
# benches/soak.sh: wharf under mixed load for a long time, with faults on a schedule, drawn as
# PNG charts. Not part of CI. Loopback only.
#
# Usage:
#   benches/soak.sh [--minutes N] [--out DIR] [--no-install] [--keep] [--disk-mib N] [--rate R]
#
#   --minutes N    length of the loaded run, after the set-up and warm-up (default 30); the fault
#                  schedule is scaled to it
#   --out DIR      where samples.csv, the PNG charts, summary.md, faults.json and wharf's
#                  warnings go (default target/soak/<UTC time>)
#   --no-install   never run apt-get; fail with the package list if a tool is missing
#   --keep         keep the temporary directory (origin storage, Go tree, logs, wharf's data)
#   --disk-mib N   size of the tmpfs holding wharf's data directory (default 1024)
#   --rate R       warm requests per second (default 150); cold content comes at 1 registry item
#                  and 0.5 Go versions per second
#   --no-faults    load only, no faults (a baseline to compare a run with)
#   --warm-only    no cold content after the warm-up (with --no-faults: does memory stay flat
#                  when nothing new is cached?)
#
# What it does, all on 127.0.0.1:
#   1. Checks for its tools and, as root, installs the missing Debian packages:
#        apt-get install gnuplot-nox docker-registry python3
#      (Rust/cargo must already be there.) Then cargo build --release.
#   2. As root, mounts a tmpfs of --disk-mib for wharf's data directory, so that the "disk
#      full" fault can fill it; otherwise (or if mounting fails) that fault is skipped and the
#      summary says so.
#   3. benches/lib/soak.py: pushes generated images (many distinct blobs, 1 KiB to 12 MiB) into
#      Debian's docker-registry and writes a generated GOPROXY tree served by python's
#      http.server; puts a fault-injecting TCP proxy in front of both; starts wharf (upstreams:
#      the proxy; go.verify = false; egress.allow = ["127.0.0.1"]; tag_ttl and list_ttl 30s,
#      read_timeout 10s, cache.min_free 64MiB); warms it with part of the content; then runs the
#      load (warm and cold, registry and Go, every body verified against its SHA-256) and the
#      faults, in this order at these shares of the run:
#        8% upstream resets, 20% upstream stall, 32% slow upstream (256 KiB/s per connection),
#        44% origin down (listeners closed; 60 s, or a tenth of shorter runs), 58% data disk
#        filled and kept full then freed, 74% kill -9 of wharf and a restart 2 s later on the
#        same data directory
#      (each proxy fault lasts a twentieth of the run, 20 to 90 s; the disk one 1.5 times that).
#   4. Samples wharf every 2 s (RSS, descriptors, connections, data directory and file system
#      use, CPU, request rate, p50/p99, errors, corrupt bodies, X-Cache outcomes), draws
#      rss/fds/disk/rate/latency/outcomes/errors PNGs with gnuplot, fault windows shaded, and
#      writes summary.md: faults, requests, errors by kind, corrupt bodies, RSS and descriptor
#      ranges, recovery after each fault; requests.csv has every request (time, latency, kind,
#      result, X-Cache) and wharf-warnings.log wharf's warnings and errors.
#      `python3 benches/lib/soak.py charts DIR` draws the charts of DIR again.
#
# Every process it starts runs in its own session and is stopped on exit, error or signal; the
# tmpfs is unmounted.
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; }

minutes=30
out=""
install=1
keep=0
disk_mib=1024
rate=150
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --minutes) minutes="$2"; shift ;;
    --out) out="$2"; shift ;;
    --no-install) install=0 ;;
    --keep) keep=1 ;;
    --disk-mib) disk_mib="$2"; shift ;;
    --rate) rate="$2"; shift ;;
    --no-faults) extra+=(--no-faults) ;;
    --warm-only) extra+=(--warm-only) ;;
    -h|--help) usage; exit 0 ;;
    *) echo "soak.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=lib/stop.sh
source "$root/benches/lib/stop.sh"
cd "$root"
command_line="benches/soak.sh --minutes $minutes"
[ "$disk_mib" != 1024 ] && command_line+=" --disk-mib $disk_mib"
[ "$rate" != 150 ] && command_line+=" --rate $rate"
[ "${#extra[@]}" -gt 0 ] && command_line+=" ${extra[*]}"

unset http_proxy https_proxy HTTP_PROXY HTTPS_PROXY all_proxy ALL_PROXY ftp_proxy FTP_PROXY
export NO_PROXY=127.0.0.1,localhost no_proxy=127.0.0.1,localhost
export PYTHONDONTWRITEBYTECODE=1  # no __pycache__ in the source tree

# --- tools --------------------------------------------------------------------------------------
need=()
for pair in gnuplot:gnuplot-nox docker-registry:docker-registry python3:python3; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair#*:}")
done
if [ "${#need[@]}" -gt 0 ]; then
  if [ "$install" = 1 ] && [ "$(id -u)" = 0 ]; then
    echo "soak.sh: installing ${need[*]}" >&2
    DEBIAN_FRONTEND=noninteractive apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}"
  else
    echo "soak.sh: missing tools; install them with: apt-get install -y ${need[*]}" >&2
    exit 1
  fi
fi
command -v cargo >/dev/null 2>&1 || { echo "soak.sh: cargo not found (install Rust)" >&2; exit 1; }

# --- temporary directory, tmpfs and cleanup -----------------------------------------------------
work="$(mktemp -d "${TMPDIR:-/tmp}/wharf-soak.XXXXXX")"
driver=""
mounted=""
cleanup() {
  local status=$?
  trap - EXIT INT TERM HUP
  stop_run "$work" "$driver"
  if [ -n "$mounted" ]; then
    umount "$mounted" 2>/dev/null || umount -l "$mounted" 2>/dev/null || true
  fi
  if [ "$keep" = 1 ]; then
    echo "soak.sh: kept $work" >&2
  else
    rm -rf "$work"
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

disk_args=()
mkdir -p "$work/disk"
if [ "$(id -u)" = 0 ] && mount -t tmpfs -o "size=${disk_mib}m,mode=0700" wharf-soak "$work/disk" 2>/dev/null; then
  mounted="$work/disk"
  disk_args=(--disk-dir "$work/disk")
else
  echo "soak.sh: cannot mount a tmpfs (not root?): SKIPPING the disk-full fault" >&2
fi

# --- build --------------------------------------------------------------------------------------
echo "soak.sh: cargo build --release" >&2
cargo build --release --locked --bin wharf >&2
target_dir="$(cargo metadata --format-version 1 --no-deps 2>/dev/null \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
wharf_bin="$target_dir/release/wharf"
wharf_version="${WHARF_BENCH_VERSION:-$(git describe --always --dirty 2>/dev/null || echo unknown)}"

if [ -z "$out" ]; then
  out="$target_dir/soak/$(date -u +%Y%m%dT%H%M%SZ)"
fi
mkdir -p "$out"
out="$(cd "$out" && pwd)"

python3 "$root/benches/lib/soak.py" \
  --work "$work" --out "$out" --command "$command_line" --minutes "$minutes" --rate "$rate" \
  --wharf "$wharf_bin" --wharf-version "$wharf_version" "${disk_args[@]}" "${extra[@]}" &
driver=$!
wait "$driver"
driver=""
echo "soak.sh: charts and summary in $out" >&2
