"""Data-parallel scaling: each framework's own engine, its launcher, the measured rounds."""
