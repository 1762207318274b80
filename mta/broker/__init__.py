"""The broker: the queues and exchanges every process declares (`topology`), confirmed
publishes in batches (`publish`), and `mta replay-quarantined` for dead-lettered mail
(`quarantine`). Mail enters the MTA here, consumed from the `mta.single` and `mta.bulk`
lanes by the engine, and leaves here as confirmed publishes of results, retry and held
copies into the delay queues, and refused bodies into `mta.invalid`.
"""
