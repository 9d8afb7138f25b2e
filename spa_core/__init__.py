"""Self-Priority Alignment: the method, its spec, stages, backends and trainer."""

__version__ = "0.1.0"
