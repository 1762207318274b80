"""SMTP: the client side of a session and its pipelined transactions. `connector` opens a
session, `session` runs its transactions, `replies` reads what the receiver answers; a
destination's worker hands a job to a `session.Session`, and what leaves is a
`client.Reply` value, the receiver's answer or a synthetic one when the connection failed,
never an exception of the SMTP library.
"""
