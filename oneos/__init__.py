"""OneOS: a network of small machines run as one computer."""

__version__ = "0.1.0"
