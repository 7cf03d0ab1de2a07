"""bots_server."""
