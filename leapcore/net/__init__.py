"""trio transports: byte pipes, WebSocket and HTTP/2 links, dialing and listening."""
