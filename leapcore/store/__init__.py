"""Files and databases: atomic files, key files, pins, worker state, configuration, hub store."""
