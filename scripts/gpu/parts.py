#!/usr/bin/env python3
"""Split a file into parts that fit one device call each, and join them back, verified.

A lent GPU machine cannot reach a package registry, and one call carries at most 64 MiB,
while the onnxruntime-gpu wheel alone is ~256 MB.  `prepare.sh` packs the wheels into one
tar and splits it here into numbered parts with a manifest of SHA-256 sums; the parts travel
over several calls (files left on a warm machine stay there between calls); `check.sh`
verifies what has arrived, says which parts are still missing, and joins them once all are
there, checking the whole file's sum too.  Standard library only: it runs on both machines.

    python3 parts.py split FILE FOLDER [--part-mib 56]
    python3 parts.py verify FOLDER          # exit 0: complete; 3: parts missing; 4: corrupt
    python3 parts.py join FOLDER DEST
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

MANIFEST = "MANIFEST.json"
CHUNK = 1 << 20
MISSING, CORRUPT = 3, 4


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def split(source: Path, folder: Path, part_bytes: int) -> dict:
    """Write ``folder/part-00, part-01, ...`` and ``folder/MANIFEST.json``; return the manifest."""
    if part_bytes <= 0:
        raise ValueError("part size must be positive")
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("part-*"):
        old.unlink()
    parts, whole = [], hashlib.sha256()
    with open(source, "rb") as handle:
        index = 0
        while True:
            data = handle.read(part_bytes)
            if not data and index:
                break
            whole.update(data)
            name = f"part-{index:02d}"
            (folder / name).write_bytes(data)
            parts.append({"name": name, "bytes": len(data),
                          "sha256": hashlib.sha256(data).hexdigest()})
            index += 1
            if len(data) < part_bytes:
                break
    manifest = {"file": source.name, "bytes": source.stat().st_size,
                "sha256": whole.hexdigest(), "parts": parts}
    _write_json(folder / MANIFEST, manifest)
    return manifest


def verify(folder: Path) -> tuple[list[str], list[str], list[str]]:
    """(parts present and correct, parts missing, parts present with a wrong size or sum)."""
    manifest = load_manifest(folder)
    good, missing, corrupt = [], [], []
    for part in manifest["parts"]:
        path = folder / part["name"]
        if not path.exists():
            missing.append(part["name"])
        elif path.stat().st_size != part["bytes"] or sha256(path) != part["sha256"]:
            corrupt.append(part["name"])
        else:
            good.append(part["name"])
    return good, missing, corrupt


def join(folder: Path, dest: Path) -> Path:
    """Concatenate every part into ``dest`` (atomically) after checking each; check the whole."""
    manifest = load_manifest(folder)
    good, missing, corrupt = verify(folder)
    if missing or corrupt:
        raise SystemExit(f"cannot join: missing {missing or 'none'}, corrupt {corrupt or 'none'}")
    tmp = dest.with_name(dest.name + ".tmp")
    whole = hashlib.sha256()
    with open(tmp, "wb") as out:
        for part in manifest["parts"]:
            with open(folder / part["name"], "rb") as handle:
                for block in iter(lambda: handle.read(CHUNK), b""):
                    whole.update(block)
                    out.write(block)
    if whole.hexdigest() != manifest["sha256"]:
        tmp.unlink()
        raise SystemExit(f"joined file's sha256 {whole.hexdigest()} differs from the manifest's")
    os.replace(tmp, dest)
    return dest


def load_manifest(folder: Path) -> dict:
    path = folder / MANIFEST
    if not path.exists():
        raise SystemExit(f"{path}: no manifest (run scripts/gpu/prepare.sh here first)")
    return json.loads(path.read_text())


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_split = sub.add_parser("split")
    p_split.add_argument("file", type=Path)
    p_split.add_argument("folder", type=Path)
    p_split.add_argument("--part-mib", type=float, default=56)
    p_verify = sub.add_parser("verify")
    p_verify.add_argument("folder", type=Path)
    p_join = sub.add_parser("join")
    p_join.add_argument("folder", type=Path)
    p_join.add_argument("dest", type=Path)
    args = parser.parse_args(argv)
    if args.command == "split":
        manifest = split(args.file, args.folder, int(args.part_mib * (1 << 20)))
        print(f"{args.file.name}: {manifest['bytes']} bytes in {len(manifest['parts'])} parts "
              f"of at most {args.part_mib:g} MiB under {args.folder}")
        return 0
    if args.command == "verify":
        good, missing, corrupt = verify(args.folder)
        total = len(good) + len(missing) + len(corrupt)
        print(f"parts: {len(good)} of {total} present and verified"
              + (f"; missing: {' '.join(missing)}" if missing else "")
              + (f"; corrupt (carry again): {' '.join(corrupt)}" if corrupt else ""))
        return CORRUPT if corrupt else MISSING if missing else 0
    join(args.folder, args.dest)
    print(f"joined {args.dest} (sha256 verified)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
