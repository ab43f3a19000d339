"""Probes, the bottom layer: speedometer, GPU telemetry, timing, statistics, a busy neighbour.
"""
