"""DKIM signing. A decoded job enters at `signer.Signer.submit`; the keyring picks the keys
that sign it, and batches go to signing processes (`signpool` starts `python -m
mta.dkim.worker`, which runs the pure functions of `signature`). The job leaves for routing
with its `DKIM-Signature` fields prepended, or for settling when it cannot be signed.
`keygen` is `mta dkim-keygen`.
"""
