"""Launch router for a federation of BinderHub clusters behind one public URL."""

__version__ = "0.1.0"
