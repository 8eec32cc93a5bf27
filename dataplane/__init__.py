"""The proxy engine: snapshot schema, control API, protocols, balancing, health, TLS."""

from dataplane import compiled

# Before any hot-path module is imported: decides between each one's extension and its source.
compiled.install()
