"""Load tests and benchmarks: locust files, trace generation and replay, measurement scripts.

Talks to torpor over HTTP only; may import torch for in-process reference measurements.
"""
