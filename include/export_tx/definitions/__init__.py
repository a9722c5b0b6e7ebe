"""Registered export definitions: one module per definition, each setting ``DEFINITION``."""
