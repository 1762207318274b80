"""Routing: which destination carries a job and under which rules. A job enters at
`table.Router.route`, which asks `mx` for the recipient domain's mail hosts (or `routes`
for a sender's smarthost) and `rules` for the rules and destination key that apply; it
leaves to the engine's delivery callback with its MX answer and resolved rules, or as
unroutable when DNS says so.
"""
