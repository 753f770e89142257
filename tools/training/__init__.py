"""Training-time data generation for detectors (self-blended images and friends)."""
