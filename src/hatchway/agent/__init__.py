"""The agent: connects to an edge, binds endpoints, forwards proxy streams. Never imports the edge."""
