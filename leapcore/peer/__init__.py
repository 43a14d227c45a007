"""The client side driven by trio: hub sessions, channel openers and channels."""
