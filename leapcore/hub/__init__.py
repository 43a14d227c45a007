"""The hub daemon: accept loop, link writers, admin RPCs and metrics."""
