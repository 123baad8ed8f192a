"""Access per key: roles per app (rules), the table of what each command needs (table),
the decision (gate), the peer's process (peer), push tickets (tickets), the audit log
(audit)."""
