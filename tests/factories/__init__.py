"""Builders of test material (certificates, keys) shared by unit, view and browser tests."""
