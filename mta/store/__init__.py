"""The MTA's state stores. By default each list or log lives in SQLite beside the rules file
(stdlib `sqlite3`, WAL), shared by the processes of one machine; when several machines must
share one, in PostgreSQL (`asyncpg`), named by a `store: postgresql://...` key of the
section that uses it (`suppression.store`). `postgres` opens connections the same way for
each of them."""
