"""wakertc: an always-on voice assistant daemon for Raspberry-Pi-class devices."""

__version__ = "0.1.0"
