"""cryo wire package."""
