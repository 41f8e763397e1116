"""The procq command-line interface."""
