"""The gateway: HTTP API, registry, per-function queues, the scheduler and its driver, worker clients.

Never imports torch on the request path (only deploy.py packs models, in a thread);
never imports anything from gpuworker except its torch-free config.
"""

__version__ = "0.1.0"
