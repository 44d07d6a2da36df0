"""`intake serve`: the admin API, /metrics and the drain's HTTP tick in one process.

aiohttp: already intake's HTTP client (measured fastest for the webhook
calls), so the server adds no dependency. See docs/serve.md.
"""
