#!/usr/bin/env python3
"""Writes an OCI image (an image layout in a tar, as `ctr images import` reads it) from a root
file system folder and an image configuration, without a container engine. The layer is
deterministic: files in name order, owned by root (or the numeric owner given per path), mtime 0.

Usage: oci_image.py ROOTFS OUT.tar NAME --config CONFIG.json [--owner PATH=UID:GID ...]
CONFIG.json holds the OCI image config's "config" object (User, Entrypoint, Cmd, Env,
WorkingDir, ExposedPorts, Labels).
"""

import argparse
import gzip
import hashlib
import io
import json
import os
import tarfile


def layer_tar(rootfs, owners):
    """The root file system as an uncompressed tar, deterministic."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        paths = []
        for folder, dirs, files in os.walk(rootfs):
            dirs.sort()
            for name in sorted(dirs) + sorted(files):
                paths.append(os.path.join(folder, name))
        for path in sorted(paths):
            relative = os.path.relpath(path, rootfs)
            info = tar.gettarinfo(path, arcname=relative)
            info.mtime = 0
            uid, gid = 0, 0
            for prefix, owner in owners:
                if relative == prefix or relative.startswith(prefix + "/"):
                    uid, gid = owner
            info.uid, info.gid, info.uname, info.gname = uid, gid, "", ""
            if info.isreg():
                with open(path, "rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
    return out.getvalue()


def blob(tar, data, media_type):
    digest = hashlib.sha256(data).hexdigest()
    info = tarfile.TarInfo(f"blobs/sha256/{digest}")
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))
    return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("rootfs")
    parser.add_argument("out")
    parser.add_argument("name", help="image reference, e.g. ferrotrain-trainer:0.1.0")
    parser.add_argument("--config", required=True)
    parser.add_argument("--owner", action="append", default=[])
    args = parser.parse_args()
    owners = []
    for spec in args.owner:
        path, ids = spec.split("=", 1)
        uid, gid = ids.split(":")
        owners.append((path.strip("/"), (int(uid), int(gid))))
    with open(args.config) as f:
        config = json.load(f)
    raw = layer_tar(args.rootfs, owners)
    compressed = gzip.compress(raw, compresslevel=6, mtime=0)
    image_config = {
        "architecture": "amd64",
        "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(raw).hexdigest()]},
        "history": [{"created_by": "scripts/oci_image.py"}],
    }
    with tarfile.open(args.out, "w") as tar:
        layout = json.dumps({"imageLayoutVersion": "1.0.0"}).encode()
        info = tarfile.TarInfo("oci-layout")
        info.size = len(layout)
        tar.addfile(info, io.BytesIO(layout))
        layer = blob(tar, compressed, "application/vnd.oci.image.layer.v1.tar+gzip")
        config_blob = blob(
            tar, json.dumps(image_config, sort_keys=True).encode(), "application/vnd.oci.image.config.v1+json"
        )
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": config_blob,
            "layers": [layer],
        }
        manifest_blob = blob(
            tar, json.dumps(manifest, sort_keys=True).encode(), "application/vnd.oci.image.manifest.v1+json"
        )
        manifest_blob["annotations"] = {"org.opencontainers.image.ref.name": args.name}
        manifest_blob["platform"] = {"architecture": "amd64", "os": "linux"}
        index = json.dumps({"schemaVersion": 2, "manifests": [manifest_blob]}).encode()
        info = tarfile.TarInfo("index.json")
        info.size = len(index)
        tar.addfile(info, io.BytesIO(index))
    print(f"{args.name}: layer {len(compressed)} bytes compressed, {len(raw)} uncompressed")


if __name__ == "__main__":
    main()
