"""Intake: a consumed delivery becomes a validated `Job` or a reason for refusing it. The
engine hands each body in; `window` holds a lane to its octet bound and decodes big bodies
off the loop, `message` checks the fields and makes the canonical DATA bytes (with
`longlines` for lines over 998 octets and `idn` for domain names). A `Job` leaves for
signing (`mta.dkim`) or routing (`mta.routing`); a refused body leaves for settling as
invalid mail.
"""
