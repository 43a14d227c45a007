"""The sans-IO protocol cores: codecs, state tables, channel multiplexing, limits and policies."""
