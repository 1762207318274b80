"""The delivery ledger of a fault scenario: what was published against what came out.

RELIABILITY.md promises at-least-once with bounded duplicates. A ledger checks it from
the outside: every published id must end in a final result (none lost), no id may end
in two different final statuses, and the extra copies the sinks accepted (and the extra
final results published) must stay within ``bound``, what could have been in flight
when the fault struck (e.g. the prefetch window times the number of crashes).

``Ledger.check`` returns a one-line summary (also printed, visible with ``pytest -s``, and
appended as JSON to ``$MTA_LEDGER_LOG`` when set) and puts it in every assertion message.
"""

from __future__ import annotations

import collections
import json
import os
from dataclasses import asdict, dataclass, field
from typing import Dict, Iterable, List, Optional


@dataclass
class LedgerFigures:
    scenario: str
    published: int
    finals: int                   # ids with at least one final result
    missing: int                  # ids with no final result: lost
    conflicting: int              # ids with final results of different statuses
    duplicate_finals: int         # final results beyond the first, over all ids
    sink_accepted: int            # acceptances at the sinks of the published ids
    sink_duplicates: int          # acceptances beyond the first, over all ids
    bound: int                    # most duplicates the fault could explain
    in_broker: int = 0            # ids without a final result, still queued at the broker
    statuses: Dict[str, int] = field(default_factory=dict)   # first final status: ids

    def line(self) -> str:
        st = ",".join(f"{k}={v}" for k, v in sorted(self.statuses.items()))
        return (f"[ledger {self.scenario}] published={self.published} finals={self.finals} "
                f"missing={self.missing} conflicting={self.conflicting} "
                f"duplicate_finals={self.duplicate_finals} sink_accepted={self.sink_accepted} "
                f"sink_duplicates={self.sink_duplicates} bound={self.bound}"
                + (f" in_broker={self.in_broker}" if self.in_broker else "") + f" ({st})")


class Ledger:
    """Published ids of one scenario and the checks on what came out for them."""

    def __init__(self, scenario: str, bound: int = 0):
        self.scenario = scenario
        self.bound = bound
        self.ids: List[str] = []
        self.expected: Dict[str, str] = {}    # id -> the final status it must end in

    def add(self, ids: Iterable[str], status: Optional[str] = "delivered") -> None:
        """Record published ids; ``status`` is the final status each must end in (None:
        any single final status will do)."""
        for i in ids:
            self.ids.append(i)
            if status is not None:
                self.expected[i] = status

    def figures(self, results: Dict[str, List[dict]], sink_counts: Dict[str, int],
                in_broker: Iterable[str] = ()) -> LedgerFigures:
        statuses: collections.Counter = collections.Counter()
        queued = set(in_broker)
        parked = 0
        missing = conflicting = dup_finals = accepted = dup_sink = with_final = 0
        for i in self.ids:
            finals = [r for r in results.get(i, []) if r.get("final") is True]
            if not finals and i in queued:
                parked += 1
            elif not finals:
                missing += 1
            else:
                with_final += 1
                statuses[str(finals[0].get("status"))] += 1
                if len({r.get("status") for r in finals}) > 1:
                    conflicting += 1
                dup_finals += len(finals) - 1
            n = sink_counts.get(i, 0)
            accepted += n
            dup_sink += max(0, n - 1)
        return LedgerFigures(self.scenario, len(self.ids), with_final, missing, conflicting,
                             dup_finals, accepted, dup_sink, self.bound, parked, dict(statuses))

    def check(self, results: Dict[str, List[dict]], sink_counts: Dict[str, int],
              *, sink_duplicates_allowed: Optional[int] = None,
              in_broker: Iterable[str] = ()) -> LedgerFigures:
        """Assert the promise for every published id; returns the figures.

        ``sink_duplicates_allowed`` overrides ``bound`` for the sink copies (0 for a
        scenario where nothing may be sent twice). ``in_broker``: ids read back from the
        broker's queues after the MTA stopped (mail a throttled destination parked for
        later): not lost, but not allowed to have a final result as well."""
        queued = set(in_broker)
        fig = self.figures(results, sink_counts, queued)
        line = fig.line()
        print(line)
        path = os.environ.get("MTA_LEDGER_LOG")
        if path:
            with open(path, "a") as fh:
                fh.write(json.dumps(asdict(fig)) + "\n")
        has_final = {i for i in self.ids if any(r.get("final") is True for r in results.get(i, []))}
        lost = [i for i in self.ids if i not in has_final and i not in queued]
        assert not lost, f"{line}: {len(lost)} ids without a final result, e.g. {lost[:5]}"
        wrong = {i: [r.get("status") for r in results.get(i, []) if r.get("final") is True]
                 for i, want in self.expected.items()
                 if any(r.get("status") != want for r in results.get(i, []) if r.get("final") is True)}
        assert not wrong, f"{line}: {len(wrong)} ids with a wrong final status, e.g. {dict(list(wrong.items())[:5])}"
        both = sorted(has_final & queued)
        assert not both, f"{line}: {len(both)} ids with a final result still queued, e.g. {both[:5]}"
        assert fig.conflicting == 0, f"{line}: ids ended in two different final statuses"
        allowed = self.bound if sink_duplicates_allowed is None else sink_duplicates_allowed
        assert fig.sink_duplicates <= allowed, f"{line}: sink duplicates above {allowed}"
        assert fig.duplicate_finals <= self.bound, f"{line}: duplicate final results above the bound"
        delivered = [i for i, want in self.expected.items() if want == "delivered"]
        unseen = [i for i in delivered if i not in queued and sink_counts.get(i, 0) < 1]
        assert not unseen, f"{line}: {len(unseen)} 'delivered' ids never reached a sink, e.g. {unseen[:5]}"
        return fig
