"""The gateway: HTTP API, registry, per-function queues, the scheduler and its driver, worker clients.

Never imports torch: models are built, packed and profiled by a builder process
(gpuworker/builder.py); imports from gpuworker only its torch-free config and builder entry.
"""

__version__ = "0.1.0"
