"""pytest fixtures and hooks only. The shared test helpers (tiny models, patch records, tolerances, LRP variables,
the command line as a subprocess, checkpoint directories) live in tests/support.py: `from tests.support import ...`."""
