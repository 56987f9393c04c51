#!/usr/bin/env python3
"""Checks that the workspace's `rust-version` is a true MSRV for the locked dependency tree.

Runs `cargo metadata --locked` and fails, listing them, when any package (dependency or
workspace member) declares a `rust-version` above the one in the root Cargo.toml's
`[workspace.package]`: the workspace cannot build on an older toolchain than its dependencies.

    python3 scripts/check-msrv.py

Stdlib only; runs from any directory.
"""

import json
import pathlib
import subprocess
import sys
import tomllib

ROOT = pathlib.Path(__file__).resolve().parent.parent


def version_key(v: str) -> tuple[int, ...]:
    """`1.88` and `1.88.0` compare equal; missing parts count as 0."""
    parts = [int(p) for p in v.split(".")]
    while len(parts) < 3:
        parts.append(0)
    return tuple(parts)


def main() -> int:
    with open(ROOT / "Cargo.toml", "rb") as f:
        manifest = tomllib.load(f)
    declared = manifest.get("workspace", {}).get("package", {}).get("rust-version")
    if not declared:
        print("check-msrv: no [workspace.package] rust-version in Cargo.toml", file=sys.stderr)
        return 1
    out = subprocess.run(
        ["cargo", "metadata", "--format-version", "1", "--locked"],
        cwd=ROOT,
        check=True,
        stdout=subprocess.PIPE,
    ).stdout
    packages = json.loads(out)["packages"]
    newer = sorted(
        (
            (p["rust_version"], p["name"], p["version"])
            for p in packages
            if p.get("rust_version") and version_key(p["rust_version"]) > version_key(declared)
        ),
        key=lambda t: (version_key(t[0]), t[1], t[2]),
        reverse=True,
    )
    highest = max(
        (p["rust_version"] for p in packages if p.get("rust_version")),
        key=version_key,
        default=None,
    )
    if newer:
        print(
            f"check-msrv: workspace rust-version = {declared}, but {len(newer)} locked "
            "package(s) need a newer rustc:",
            file=sys.stderr,
        )
        for rust_version, name, version in newer:
            print(f"  {name} {version}: rust-version {rust_version}", file=sys.stderr)
        print(
            f"check-msrv: raise rust-version to {highest} or downgrade them "
            "(cargo update -p NAME --precise OLDER)",
            file=sys.stderr,
        )
        return 1
    print(
        f"check-msrv: ok, rust-version {declared} covers {len(packages)} packages "
        f"(highest declared: {highest})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
