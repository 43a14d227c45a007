"""Fuzz harnesses for leapcore's sans-IO crypto core (see fuzz/README.md)."""
