#!/usr/bin/env python3
"""Generates the benchmark's content, deterministically, with the Python standard library only.

  gen.py OUT [--big-mib 256] [--small-layers 48] [--go-modules 60] [--go-big-mib 8]

writes
  OUT/oci/          an OCI image layout (refs "big", "small", "multi") for `skopeo copy oci:...`
  OUT/static/       the same bytes as a read-only registry for nginx: blobs/sha256/<hex> and
                    manifests/<repo>/<ref> (tags and digests)
  OUT/go/           a GOPROXY file tree (<module>/@v/list, .info, .mod, .zip)
  OUT/gomain/go.mod a main module whose `go mod download` fetches the whole Go module graph
  OUT/meta.json     digests, sizes and media types the driver needs

Layers are ustar archives of pseudo-random bytes wrapped in gzip "stored" deflate blocks, the way
tests/support/oci.rs builds them: skopeo pushes them without recompressing, so digests are the same
on every run. Equal arguments give byte-identical output.
"""

import argparse
import hashlib
import io
import json
import os
import random
import struct
import zipfile
import zlib

MT_INDEX = "application/vnd.oci.image.index.v1+json"
MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
REF_NAME = "org.opencontainers.image.ref.name"


def digest(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def to_json(value):
    return json.dumps(value, separators=(",", ":"), sort_keys=False).encode()


def single_file_tar(name, content):
    header = bytearray(512)

    def field(offset, data):
        header[offset : offset + len(data)] = data

    field(0, name.encode())
    field(100, b"0000644\0")
    field(108, b"0000000\0")
    field(116, b"0000000\0")
    field(124, b"%011o\0" % len(content))
    field(136, b"00000000000\0")
    field(156, b"0")
    field(257, b"ustar\0")
    field(263, b"00")
    header[148:156] = b" " * 8
    checksum = sum(header)
    header[148:156] = b"%06o\0 " % checksum
    padded = (len(content) + 511) // 512 * 512
    out = bytearray(header)
    out += content
    out += bytes(padded - len(content) + 1024)
    return bytes(out)


def gzip_stored(data):
    """RFC 1952 gzip of `data` using RFC 1951 stored blocks (random data does not compress)."""
    max_block = 65535
    out = bytearray(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff")
    view = memoryview(data)
    if not data:
        out += b"\x01\x00\x00\xff\xff"
    for start in range(0, len(data), max_block):
        chunk = view[start : start + max_block]
        last = start + max_block >= len(data)
        out += struct.pack("<BHH", 1 if last else 0, len(chunk), len(chunk) ^ 0xFFFF)
        out += chunk
    out += struct.pack("<II", zlib.crc32(data) & 0xFFFFFFFF, len(data) & 0xFFFFFFFF)
    return bytes(out)


def pseudo_random(seed, size):
    rng = random.Random(seed)
    chunk = 1 << 20
    return b"".join(rng.randbytes(min(chunk, size - start)) for start in range(0, size, chunk))


class Layout:
    def __init__(self, root, static):
        self.root = root
        self.static = static
        self.refs = []
        os.makedirs(os.path.join(root, "blobs", "sha256"), exist_ok=True)
        os.makedirs(os.path.join(static, "blobs", "sha256"), exist_ok=True)
        with open(os.path.join(root, "oci-layout"), "w") as f:
            f.write('{"imageLayoutVersion":"1.0.0"}')

    def put(self, media_type, data):
        d = digest(data)
        path = os.path.join(self.root, "blobs", "sha256", d[7:])
        with open(path, "wb") as f:
            f.write(data)
        link = os.path.join(self.static, "blobs", "sha256", d[7:])
        if not os.path.exists(link):
            os.link(path, link)
        return {"mediaType": media_type, "digest": d, "size": len(data)}

    def image(self, seed, arch, layer_sizes):
        layers, diff_ids = [], []
        for n, size in enumerate(layer_sizes):
            content = pseudo_random(seed * 1_000_003 + n, size)
            tar = single_file_tar("wharf-bench/layer-%d.bin" % n, content)
            diff_ids.append(digest(tar))
            layers.append(self.put(MT_LAYER_GZIP, gzip_stored(tar)))
        config = {
            "created": "2024-01-01T00:00:00Z",
            "architecture": arch,
            "os": "linux",
            "config": {"Labels": {"wharf.bench.seed": str(seed)}},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }
        config = self.put(MT_CONFIG, to_json(config))
        manifest = {
            "schemaVersion": 2,
            "mediaType": MT_MANIFEST,
            "config": config,
            "layers": layers,
        }
        return self.put(MT_MANIFEST, to_json(manifest)), layers

    def index(self, children):
        entries = []
        for arch, desc in children:
            entry = dict(desc)
            entry["platform"] = {"architecture": arch, "os": "linux"}
            entries.append(entry)
        doc = {"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": entries}
        return self.put(MT_INDEX, to_json(doc))

    def tag(self, desc, ref):
        entry = dict(desc)
        entry["annotations"] = {REF_NAME: ref}
        self.refs.append(entry)
        with open(os.path.join(self.root, "index.json"), "wb") as f:
            f.write(to_json({"schemaVersion": 2, "manifests": self.refs}))

    def static_manifest(self, repo, ref, desc):
        """manifests/<repo>/<ref> for nginx (a hard link to the blob), plus its media type."""
        directory = os.path.join(self.static, "manifests", repo)
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, ref)
        if not os.path.exists(path):
            os.link(os.path.join(self.root, "blobs", "sha256", desc["digest"][7:]), path)
        return {"repo": repo, "ref": ref, "mediaType": desc["mediaType"]}


def escape_module(path):
    return "".join("!" + c.lower() if c.isupper() else c for c in path)


def go_tree(out, modules, big_mib):
    """A module graph: main requires every module at v1.1.0; each v1.1.0 requires a few others
    at v1.0.0 (so the go command also fetches older go.mod files), declared `go 1.16` so the
    graph is not pruned and every go.mod in it is loaded."""
    root = os.path.join(out, "go")
    names = ["bench.example/mod%03d" % i for i in range(modules - 1)] + ["bench.example/BigMod"]
    rng = random.Random(4242)
    for i, name in enumerate(names):
        esc = escape_module(name)
        vdir = os.path.join(root, esc, "@v")
        os.makedirs(vdir, exist_ok=True)
        with open(os.path.join(vdir, "list"), "w") as f:
            f.write("v1.0.0\nv1.1.0\n")
        later = names[i + 1 :]
        deps = rng.sample(later, min(3, len(later)))
        for version in ("v1.0.0", "v1.1.0"):
            gomod = "module %s\n\ngo 1.16\n" % name
            if version == "v1.1.0" and deps:
                gomod += "\nrequire (\n" + "".join("\t%s v1.0.0\n" % d for d in sorted(deps)) + ")\n"
            info = '{"Version":"%s","Time":"2024-01-01T00:00:00Z"}\n' % version
            with open(os.path.join(vdir, version + ".info"), "w") as f:
                f.write(info)
            with open(os.path.join(vdir, version + ".mod"), "w") as f:
                f.write(gomod)
            buf = io.BytesIO()
            prefix = "%s@%s/" % (name, version)
            with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:

                def add(rel, data):
                    zi = zipfile.ZipInfo(prefix + rel, date_time=(1980, 1, 1, 0, 0, 0))
                    zi.compress_type = zipfile.ZIP_DEFLATED
                    z.writestr(zi, data)

                add("go.mod", gomod)
                add("LICENSE", "generated for the wharf benchmark\n")
                seed = hash_seed(name, version)
                frng = random.Random(seed)
                files = 12 if name != names[-1] else 16
                for n in range(files):
                    if name == names[-1]:
                        # Incompressible payload: a zip of about big_mib MiB.
                        size = big_mib * 1024 * 1024 // files
                        body = "// %s\n" % pseudo_random(frng.getrandbits(64), size // 2).hex()
                    else:
                        size = frng.randint(1024, 24 * 1024)
                        body = "// %s\n" % frng.randbytes(size // 2).hex()
                    pkg = "p%d" % i
                    add("f%02d.go" % n, "package %s\n\n%s" % (pkg, body))
            with open(os.path.join(vdir, version + ".zip"), "wb") as f:
                f.write(buf.getvalue())
    main = os.path.join(out, "gomain")
    os.makedirs(main, exist_ok=True)
    with open(os.path.join(main, "go.mod"), "w") as f:
        f.write("module bench.example/main\n\ngo 1.19\n\nrequire (\n")
        for name in names:
            f.write("\t%s v1.1.0\n" % name)
        f.write(")\n")
    return names


def hash_seed(*parts):
    return int.from_bytes(hashlib.sha256("\0".join(parts).encode()).digest()[:8], "little")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--big-mib", type=int, default=256)
    ap.add_argument("--small-layers", type=int, default=48)
    ap.add_argument("--go-modules", type=int, default=60)
    ap.add_argument("--go-big-mib", type=int, default=8)
    args = ap.parse_args()

    out = args.out
    lay = Layout(os.path.join(out, "oci"), os.path.join(out, "static"))
    meta = {"images": {}, "static": []}

    # One large layer (plus a small one, as real images have a base layer and an app layer).
    big, big_layers = lay.image(1, "amd64", [args.big_mib * 1024 * 1024, 64 * 1024])
    lay.tag(big, "big")
    meta["images"]["big"] = {
        "repo": "bench/big",
        "tag": "v1",
        "manifest": big,
        "layer": big_layers[0],
        "blobs": sum(layer["size"] for layer in big_layers),
    }

    # Many small layers: 4 KiB .. 1 MiB, log-uniform, fixed seed.
    rng = random.Random(7)
    sizes = [int(2 ** rng.uniform(12, 20)) for _ in range(args.small_layers)]
    small, small_layers = lay.image(2, "amd64", sizes)
    lay.tag(small, "small")
    meta["images"]["small"] = {
        "repo": "bench/small",
        "tag": "v1",
        "manifest": small,
        "layer": small_layers[0],
        "layers": len(small_layers),
        "blobs": sum(layer["size"] for layer in small_layers),
    }

    # A multi-arch index of two small images.
    amd64, _ = lay.image(3, "amd64", [256 * 1024, 32 * 1024])
    arm64, _ = lay.image(4, "arm64", [256 * 1024, 32 * 1024])
    multi = lay.index([("amd64", amd64), ("arm64", arm64)])
    lay.tag(multi, "multi")
    meta["images"]["multi"] = {"repo": "bench/multi", "tag": "v1", "manifest": multi}

    for key, image in meta["images"].items():
        desc = image["manifest"]
        meta["static"].append(lay.static_manifest(image["repo"], image["tag"], desc))
        meta["static"].append(lay.static_manifest(image["repo"], desc["digest"], desc))
    for child in (amd64, arm64):
        meta["static"].append(lay.static_manifest("bench/multi", child["digest"], child))

    meta["go"] = {"modules": go_tree(out, args.go_modules, args.go_big_mib)}
    with open(os.path.join(out, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)


if __name__ == "__main__":
    main()
