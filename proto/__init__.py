"""cryo proto package."""
