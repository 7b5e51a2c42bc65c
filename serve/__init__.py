"""`gencc serve`: compiled samplers behind an HTTP API (docs/SERVING.md).

The package needs the `[serve]` extra (Starlette, uvicorn, prometheus_client) and imports only the light
runtime: no torch, no onnx. `create_app(models, ServerConfig())` gives the ASGI app; `gencc serve` runs it.
"""
