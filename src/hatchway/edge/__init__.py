"""The edge: the public entry that accepts agents and clients. Never imports ``hatchway.agent``."""
