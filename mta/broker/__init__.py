"""The broker: the queues and exchanges every process declares (`topology`), confirmed
publishes in batches (`publish`), `mta replay-quarantined` for dead-lettered mail
(`quarantine`), and every other call the MTA makes to RabbitMQ (`client`). The only
package that imports aio-pika, aiormq and pamqp; their failures leave it as ours
(`errors`: BrokerLost, PublishRefused, PublishTimeout). Mail enters the MTA here, consumed from the `mta.single` and `mta.bulk`
lanes by the engine, and leaves here as confirmed publishes of results, retry and held
copies into the delay queues, and refused bodies into `mta.invalid`.
"""
