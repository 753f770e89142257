"""Imports every detector module so each registers itself (explicit, no scanning)."""
import detectors.sbi_mobilenetv2  # noqa: F401
