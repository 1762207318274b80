"""Destinations: the queues and connection workers that carry routed mail out, within the
limits the `shaper` package decides. A routed job enters with `delivery.Destination.push`;
a worker (`worker`) sends it over an SMTP session (`mta.smtp`) once the destination's window, rate,
its provider's `share` and the process's connection `budget` allow, and the outcome leaves
to the engine for settling. Mail the destination cannot send soon leaves to be held in a
delay queue instead.
"""
