"""The embedded services: SecantusDB and redis-server processes for a machine with nothing installed."""
