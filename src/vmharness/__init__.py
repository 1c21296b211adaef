"""vmharness: run test suites inside throw-away virtual machines as batch jobs."""

__version__ = "0.1.0"
