"""Summarise a py-spy speedscope profile: the functions with the most own and total samples.

    .venv/bin/python benchmarks/spysummary.py profile.json [--top 30] [--idle]

Idle samples (the event loop waiting in epoll) are left out unless --idle is given, so the
shares are shares of the CPU the process used.
"""

from __future__ import annotations

import argparse
import collections

import orjson

IDLE = ("select (selectors.py", "_run_once", "run_forever")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("profile")
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--idle", action="store_true")
    args = ap.parse_args()
    doc = orjson.loads(open(args.profile, "rb").read())
    frames = doc["shared"]["frames"]
    names = [f"{f['name']} ({f.get('file', '').rsplit('/', 2)[-1]}:{f.get('line', '')})" for f in frames]
    own: collections.Counter = collections.Counter()
    total: collections.Counter = collections.Counter()
    n = 0
    for profile in doc["profiles"]:
        for stack, weight in zip(profile["samples"], profile["weights"]):
            if not stack:
                continue
            leaf = names[stack[-1]]
            if not args.idle and (leaf.startswith("select (") or leaf.startswith("poll (")):
                continue
            n += weight
            own[leaf] += weight
            for f in set(stack):
                total[names[f]] += weight
    print(f"{n} busy samples")
    print("-- own")
    for name, w in own.most_common(args.top):
        print(f"{100 * w / n:5.1f}%  {name}")
    print("-- total")
    for name, w in total.most_common(args.top):
        print(f"{100 * w / n:5.1f}%  {name}")


if __name__ == "__main__":
    main()
