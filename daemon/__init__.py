"""cryo daemon package."""
