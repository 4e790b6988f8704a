#!/usr/bin/env python3
"""Fails unless every package in Cargo.lock declares a `rust-version` no newer than the crate's.

The declarations come from `cargo metadata`; the lock's own entries are read too, so that a
package the metadata did not report fails instead of passing unseen.

Policy:
- Workspace members other than the crate (loom-tests) are not dependencies and are skipped.
- A package that declares no `rust-version` passes, as it does for cargo's MSRV-aware resolver,
  and is listed: the declared check cannot vouch for it. What the library compiles is vouched
  for by the MSRV build in `.ci/run` (`cargo +MSRV check --lib --all-features`).
- EXEMPT names packages that are compiled only for a target the MSRV toolchain does not have,
  with the reason. An exempt package must still be in the lock (no stale entries) and must not
  be a normal or build dependency of the crate on any target (users never compile it).

Standard library only (Python 3.8+).
"""

import json
import pathlib
import re
import subprocess
import sys

CRATE = "ratekeeper"

EXEMPT = {
    # getrandom 0.3 (under proptest, governor, tempfile: dev-dependencies) uses these only on
    # wasm32-wasip2 (`target_env = "p2"`), a target rustc gained in 1.78, after the MSRV.
    "wasip2": "wasm32-wasip2 only, via getrandom 0.3; a target newer than the MSRV",
    "wit-bindgen": "wasm32-wasip2 only, via wasip2; a target newer than the MSRV",
}


def version_key(v):
    """'1.75' -> (1, 75, 0); '1.71.1' -> (1, 71, 1)."""
    parts = [int(re.match(r"\d+", p).group()) for p in v.split(".")]
    return tuple(parts + [0] * (3 - len(parts)))


def lock_entries(path):
    """(name, version) of every [[package]] in a Cargo.lock, without a TOML library."""
    entries, name = set(), None
    for line in path.read_text().splitlines():
        if line == "[[package]]":
            name = None
        elif m := re.match(r'name = "(.+)"$', line):
            name = m.group(1)
        elif (m := re.match(r'version = "(.+)"$', line)) and name is not None:
            entries.add((name, m.group(1)))
            name = None
    return entries


def main():
    root = pathlib.Path(__file__).resolve().parent.parent
    meta = json.loads(
        subprocess.run(
            ["cargo", "metadata", "--format-version", "1", "--locked", "--all-features"],
            cwd=root,
            check=True,
            stdout=subprocess.PIPE,
        ).stdout
    )
    packages = {p["id"]: p for p in meta["packages"]}
    members = set(meta["workspace_members"])
    crate_id = next(i for i in members if packages[i]["name"] == CRATE)
    msrv = packages[crate_id]["rust_version"]
    if not msrv:
        sys.exit(f"{CRATE} declares no rust-version")

    # What a user of the crate compiles: normal and build dependencies, on every target.
    nodes = {n["id"]: n for n in meta["resolve"]["nodes"]}
    used, todo = set(), [crate_id]
    while todo:
        for dep in nodes[todo.pop()]["deps"]:
            kinds = {k["kind"] for k in dep["dep_kinds"]}
            if kinds & {None, "build"} and dep["pkg"] not in used:
                used.add(dep["pkg"])
                todo.append(dep["pkg"])

    failures, undeclared, exempted = [], [], []
    seen = set()
    for pid, p in sorted(packages.items(), key=lambda kv: (kv[1]["name"], kv[1]["version"])):
        seen.add((p["name"], p["version"]))
        if pid in members:
            continue
        rv = p.get("rust_version")
        label = f'{p["name"]} {p["version"]}'
        if rv is None:
            undeclared.append(label)
        elif version_key(rv) > version_key(msrv):
            if p["name"] in EXEMPT and pid not in used:
                exempted.append(f"{label} (rust-version {rv}): {EXEMPT[p['name']]}")
            else:
                why = " (a dependency users compile)" if p["name"] in EXEMPT else ""
                failures.append(f"{label} declares rust-version {rv}{why}")

    missing = lock_entries(root / "Cargo.lock") - seen
    failures += [f"{n} {v} is in Cargo.lock but not in cargo metadata" for n, v in sorted(missing)]
    names = {p["name"] for p in packages.values()}
    failures += [f"EXEMPT entry {n} is not in the lock: remove it" for n in EXEMPT if n not in names]

    print(f"{len(packages) - len(members)} locked packages against {CRATE}'s rust-version {msrv}")
    print(f"declare none ({len(undeclared)}; not checkable here): {', '.join(undeclared)}")
    for e in exempted:
        print(f"exempt: {e}")
    if failures:
        print("\n".join(["FAILED:"] + failures), file=sys.stderr)
        print(
            "fix: `cargo update` (the MSRV-aware resolver in .cargo/config.toml picks versions "
            "that fit), or raise rust-version in Cargo.toml if that is the honest answer",
            file=sys.stderr,
        )
        sys.exit(1)
    print("ok")


if __name__ == "__main__":
    main()
