"""One attempt of one run, and the local orchestration of a matrix."""
