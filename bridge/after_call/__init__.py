"""After the call: the ledger, the sweeper, result polling, delivery, /calls, Eka's webhook."""
