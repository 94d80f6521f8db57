"""`rejoin serve`: one server's runtime as a service for hosts in any language."""

from rejoin.service.drain import Service

__all__ = ["Service"]
