"""The device agent: one asyncio process serving the wire protocol, HTTP and legacy ports."""
