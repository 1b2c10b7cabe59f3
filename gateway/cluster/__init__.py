"""Many nodes, one platform: the registry, placement and routing shared through one Redis.

Imports the gateway's Service and Starlette, redis and httpx; never torch. Without
`--cluster` nothing here is imported and a node is the single-node server.
"""
