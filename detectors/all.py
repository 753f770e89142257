"""Imports every detector module so each registers itself (explicit, no scanning)."""
