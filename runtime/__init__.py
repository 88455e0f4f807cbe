"""cryo runtime package."""
