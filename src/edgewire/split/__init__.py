"""Split computing: a head on the device, a bottleneck over the wire, the tail on a server."""
