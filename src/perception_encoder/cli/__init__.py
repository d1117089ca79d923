"""The ``pe`` command line. Each command lives in its own module; ``main`` loads them on demand."""
