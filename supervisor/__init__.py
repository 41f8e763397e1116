"""The procq supervisor: event loop, fork server, workers and enforcement."""
