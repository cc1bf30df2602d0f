"""Actions of a live run: what a classified frame drives (GPIO pins, commands, HTTP POSTs).

``config`` parses the actions file, ``policy`` decides (sans-IO) which actions fire,
``pins``, ``commands`` and ``post`` carry them out.
"""
