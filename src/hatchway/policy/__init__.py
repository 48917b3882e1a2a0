"""Traffic Policy: documents of rules (CEL expressions and actions) compiled once, run per request.

Sans-IO like ``wire/`` and ``http/``: nothing here awaits, opens sockets or reads clocks. The edge builds
an ``Exchange`` (see ``model``) from each request, passes the current time in, runs the compiled phases
and applies the outcome (a reply, or the changed request/response) with its own I/O.
"""
