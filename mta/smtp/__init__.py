"""SMTP: the client side of a session and its pipelined transactions (`client`). A
destination's worker hands a job to a `client.Session`; what leaves is a `client.Reply`
value, the receiver's answer or a synthetic one when the connection failed, never an
exception of the SMTP library.
"""
