"""Measuring on a shared machine: fresh processes, interleaved rounds, noise-aware verdicts."""
