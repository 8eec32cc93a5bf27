"""The REST API under /api/v1/ (django-ninja): one module per resource.

Endpoints validate a JSON body with the same Django forms the pages use (so every rule gives
the same message) and call the same service functions (listeners/services.py); nothing here
writes to the database by itself.
"""
