"""The ``scratch`` command line: the one composition root that wires everything together."""
