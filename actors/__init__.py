"""commandpost actors."""
