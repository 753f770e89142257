"""Imports every detector module so each registers itself (explicit, no scanning)."""
import detectors.boken  # noqa: F401
import detectors.sbi_mobilenetv2  # noqa: F401
import detectors.selimsef  # noqa: F401
import detectors.wm  # noqa: F401
