"""The worker process: one per device. Device backends (cpu, cuda), arena, swap engine, executor.

Imports torch; must not import starlette, uvicorn or anything from gateway/.
"""
