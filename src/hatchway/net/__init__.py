"""The asyncio rim shared by the edge and the agent: sockets, TLS and the muxado driver."""
