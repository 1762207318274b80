"""Several nodes, one MTA (SPEC §6): limits and state shared through Redis (or Valkey).

What the store holds (every key under the prefix `mta:`):
- `mta:lease:KEY` (sorted set): one member per open SMTP connection of a destination
  (`KEY` is the destination key, e.g. `provider:google`), scored by the time it expires
  unless its node renews it (`leases`). A node opens a connection only with a lease.
- `mta:rate:KEY` (string): the GCRA theoretical arrival time of a rate (`rates`), in
  microseconds of the store's clock; nodes take a few slots per round trip.
- `mta:nodes` (hash): node name -> its last heartbeat and what it runs (`nodes`).
- `mta:state` (hash) and channel `mta:state`: pauses, throttles, learned windows and
  rates, route faults in force, with their end times (`shared`).
- `mta:final:KEY` (string, with a TTL): the final outcome of a message, so that a node
  that gets a redelivered copy publishes that result instead of sending it again.

Every call has a short timeout; a store that does not answer never blocks delivery: the
node falls back to its share of every limit (the limit divided by the nodes seen in the
last minute, at least 1), says so once in the log, in `mta status` and in
`mta_cluster_store_up`, and rejoins by itself (`store`).
"""
