"""PostgreSQL connections for the shared stores: one way to open them (bounded waits, no
statement cache surprises), to lay out a schema once across nodes starting together, and
to say which server without its password."""

from __future__ import annotations

import re

CONNECT_TIMEOUT = 5.0  # seconds to connect
COMMAND_TIMEOUT = 10.0  # seconds any statement may take by default


def redact(url: str) -> str:
    """The URL without its password."""
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


async def connect(url: str):
    """One connection (asyncpg is imported only by the processes that use a shared store)."""
    import asyncpg

    return await asyncpg.connect(url, timeout=CONNECT_TIMEOUT, command_timeout=COMMAND_TIMEOUT)


async def create_schema(connection, name: str, schema: str) -> None:
    """Run `schema` (CREATE ... IF NOT EXISTS statements) under an advisory lock: nodes that
    start at once would otherwise race on the catalog ("duplicate key value violates unique
    constraint pg_type_typname_nsp_index")."""
    async with connection.transaction():
        await connection.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"mta schema {name}")
        await connection.execute(schema)
