"""Executors run a plan: fetch tile bytes, decode them, place them into the output."""
