"""Server and CA certificates: strict PEM validation, private keys encrypted at rest, pages."""
