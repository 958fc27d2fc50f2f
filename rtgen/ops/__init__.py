"""Running it: the health check and the service."""
