"""The worker daemon: its hub link, its channels, built-in services and the signing pool."""
