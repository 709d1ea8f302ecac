"""The LanceDB audit trail (`runstore.RunStore`): tables and schemas, idempotent group-committed
writes under Redis claims, and maintenance in a process of its own."""
