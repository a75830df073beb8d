"""Datastores: one Store protocol (base.py), one adapter per backend."""
