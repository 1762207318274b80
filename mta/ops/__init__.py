"""Operating the MTA: Prometheus `metrics`, `mta status` snapshots (`status`), `mta pause`,
`resume` and `reload` over the control exchange (`control`), and `mta check --explain`
(`explain`). No mail passes through here: the engine reports outcomes and state to it, and
operator commands enter through the control exchange and leave as pauses and reloads the
engine applies.
"""
