"""Command groups kept out of cli.py, each registering its click commands on the main group."""
