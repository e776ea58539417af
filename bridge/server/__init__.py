"""Additions to uvicorn's protocols: inline media messages, a bound on reading requests."""
