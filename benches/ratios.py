#!/usr/bin/env python3
"""Prints the latest `cargo bench` results as a Markdown table of ratios to governor.

Reads criterion's estimates under target/criterion; each figure is the median time per call,
divided by governor's figure for the same thing in the same run:
admit, deny, peek -> admit|deny/governor_check; admit_no_clock -> governor_check_fake_clock;
threads/X/N -> threads/governor_check/N.
Usage: python3 benches/ratios.py [target/criterion]
"""
import json
import pathlib
import sys

root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "target/criterion")


def results():
    """Median ns per call by criterion's full id (group/function[/parameter])."""
    out = {}
    for est in root.glob("**/new/estimates.json"):
        name = json.loads((est.parent / "benchmark.json").read_text())["full_id"]
        out[name] = json.loads(est.read_text())["median"]["point_estimate"]
    return out


def reference(name):
    group, _, rest = name.partition("/")
    if group == "admit_no_clock":
        return "admit_no_clock/governor_check_fake_clock"
    if group == "peek":
        return "admit/governor_check"
    if group == "threads":
        return "threads/governor_check/" + rest.rsplit("/", 1)[1]
    if group in ("admit", "deny"):
        return group + "/governor_check"
    return None


r = results()
print("| bench | median ns/call | ratio to governor |")
print("|---|---:|---:|")
for name in sorted(r):
    ref = reference(name)
    ratio = f"{r[name] / r[ref]:.2f}x" if ref in r else "-"
    print(f"| {name} | {r[name]:.1f} | {ratio} |")
