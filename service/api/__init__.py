"""HTTP edge of the service: thin routers (/v1, /v2, system), each registered by one function."""
