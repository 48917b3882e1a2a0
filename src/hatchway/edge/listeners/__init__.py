"""Client-facing listeners: bytes from public clients become requests routed through tunnels."""
