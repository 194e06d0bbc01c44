"""pytest plugin of stackfs (the ``pytest11`` entry point): fixtures for regression tests.

Fixtures are added by the reproducer work; the module must exist for the entry point to load.
"""
