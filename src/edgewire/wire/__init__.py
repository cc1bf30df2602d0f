"""The native wire protocol and the legacy seed protocols, as sans-IO codecs."""
