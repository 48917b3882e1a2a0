"""The SSH entry: endpoints from a stock ``ssh -R`` with no agent installed (see ``server.py``).

A composition layer like ``cli/``: it joins the edge (registry, Bind path) with the agent's pieces (the
in-process agent session, the byte splice, the CLI's flag parsing). ``edge/`` and ``agent/`` must never
import it; the edge starts it through ``Edge.add_service``.
"""
