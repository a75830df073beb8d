"""The CNI protocol layer: the only code that writes to stdout."""
