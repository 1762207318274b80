"""The suppression list at size (SPEC §8, issue: 10 million entries in at most 100 MB of RSS,
at most 5 µs per lookup): fills a SQLite store, loads the in-memory index from it the way
a starting MTA does, and times lookups.

    .venv/bin/python benchmarks/suppression.py [--entries 10000000]

Reports the store's fill time and size, the index's load time and the RSS it added, and
per lookup: the index alone (a key present or not), and the whole question an MTA asks
per message (the key computed from the address, for the global scope and one more).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.cluster import machine  # noqa: E402
from mta.suppression.index import Index  # noqa: E402
from mta.suppression.keys import key, key_of, normalize  # noqa: E402
from mta.suppression.store import Store  # noqa: E402


def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def fill(store: Store, n: int) -> None:
    db = store.db
    db.execute("BEGIN")
    batch = []
    for i in range(n):
        address = f"user{i}@domain{i % 50000}.example"
        batch.append((key("global", address), address, "global", "hard_bounce", 1.7e9, None, None))
        if len(batch) == 100_000:
            db.executemany("INSERT OR IGNORE INTO suppression VALUES (?, ?, ?, ?, ?, ?, ?)", batch)
            batch.clear()
    db.executemany("INSERT OR IGNORE INTO suppression VALUES (?, ?, ?, ?, ?, ?, ?)", batch)
    db.execute("COMMIT")


def per_call(fn, items, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        for item in items:
            fn(item)
        best = min(best, (time.perf_counter() - started) / len(items))
    return best * 1e6


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--entries", type=int, default=10_000_000)
    parser.add_argument("--lookups", type=int, default=200_000)
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="mta-suppression-")
    store = Store(os.path.join(work, "list.sqlite"))
    started = time.perf_counter()
    fill(store, args.entries)
    filled = time.perf_counter() - started
    size = os.path.getsize(store.path) / 2**20

    before = rss_mb()
    started = time.perf_counter()
    index = Index(store.keys())
    loaded = time.perf_counter() - started
    added = rss_mb() - before

    rng = random.Random(1)
    present = [key("global", f"user{i}@domain{i % 50000}.example")
               for i in (rng.randrange(args.entries) for _ in range(args.lookups))]
    absent = [rng.getrandbits(63) for _ in range(args.lookups)]
    addresses = [f"someone{i}@elsewhere{i % 977}.example" for i in range(args.lookups)]

    def question(address: str) -> bool:  # what intake asks per message: global scope and one more
        normalized = normalize(address)
        return key_of("global", normalized) in index or key_of("source:webshop", normalized) in index

    hit = per_call(index.__contains__, present)
    miss = per_call(index.__contains__, absent)
    whole = per_call(question, addresses)
    assert all(k in index for k in present[:1000])
    print(f"machine: {machine()}")
    print(f"entries {len(index):,}: store filled in {filled:.1f}s ({size:.0f} MB on disk)")
    print(f"index loaded in {loaded:.1f}s, RSS +{added:.0f} MB")
    print(f"lookup: present {hit:.2f} us, absent {miss:.2f} us; per message (2 keys from the address "
          f"and 2 lookups) {whole:.2f} us")
    store.close()
    for name in os.listdir(work):
        os.unlink(os.path.join(work, name))
    os.rmdir(work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
