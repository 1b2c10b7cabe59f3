"""Code used by both the gateway and the workers: wire protocol, tensor specs, host model store.

Must not import starlette or uvicorn; torch only inside the model store, zoo and packing code.
"""
