"""The ``decaykit`` command line: one thin subcommand module per public Python API."""
