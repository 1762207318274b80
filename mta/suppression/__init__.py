"""The suppression list (SPEC §8): addresses that told us no (a hard bounce, a complaint, an
operator), never mailed again within their scope. The list lives in a store (`store`:
SQLite by default); every process answers "is this recipient suppressed?" from memory
(`index`), kept current from the store's changes."""
