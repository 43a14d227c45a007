"""Sans-IO cryptographic cores: primitives, keys, handshake, transport cipher and rekey."""
