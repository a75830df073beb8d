"""End-to-end tests and the real-component test bed (see docs/testbed.md)."""
