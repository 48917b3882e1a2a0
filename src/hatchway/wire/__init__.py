"""ngrok's agent protocol as sans-IO code: muxado frames, the mux state machine, typed streams, RPC.

Rule 1: nothing in this package imports asyncio, socket, ssl or reads a clock; callers pass time in.
Rule 2: nothing here imports the rest of Hatchway except ``hatchway.errors``.
"""
