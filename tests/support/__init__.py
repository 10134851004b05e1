"""Shared test helpers: polling with a deadline, free ports, throwaway databases, subprocesses."""
