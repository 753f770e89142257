"""Face-swap detectors: the interface (base), the registry, weights, and one module per detector (found by the registry through cards/)."""
