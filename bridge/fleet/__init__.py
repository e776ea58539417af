"""Many bridge processes, one truth: leases in the shared ledger, events that reach the process
that owns a call (PostgreSQL's LISTEN/NOTIFY), and streams relayed to it."""
