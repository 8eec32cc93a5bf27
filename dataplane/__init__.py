"""The proxy engine: snapshot schema, control API, protocols, balancing, health, TLS."""
