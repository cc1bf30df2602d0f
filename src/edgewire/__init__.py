"""edgewire: machine learning at the edge, over the network."""

__version__ = "0.1.0"
