"""The drain: queued intents validated by the webhook, committed to DB2, archived.

Storage apart from decisions, the way procrastinate keeps its manager beside
its worker: `store` runs every statement, `batch` decides what one batch
does with its intents, and `worker` (the loop of `intake drain`) and `tick`
(one batch per HTTP call) each build a `context` to run batches with.
`intents` reads queue messages, `webhook` and `ledger` speak to the payment
side and to DB2's commit RPC, `retry` spaces the tries, and `phases` times
batches for the bench.
"""
