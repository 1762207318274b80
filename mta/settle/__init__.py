"""Settling: an outcome becomes broker writes, and the delivery is acknowledged only once
they are confirmed. The engine hands every outcome (final, deferred, held or invalid) to
`settler.Settler`, which acknowledges through `acks.AckBook` and writes the documents of
`results`; final outcomes are written to the on-disk `journal` first, so a crash
does not send a delivered message again. What leaves is confirmed publishes through
`mta.broker` and the acknowledgement of the consumed delivery.
"""
