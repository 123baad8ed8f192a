"""pikud: piku without uWSGI, one asyncio daemon that supervises every app."""

__version__ = "0.1.0"
