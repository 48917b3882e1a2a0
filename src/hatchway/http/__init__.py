"""Sans-IO HTTP helpers shared by the edge and the agent. No asyncio, sockets, ssl or clocks in here."""
