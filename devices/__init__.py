"""commandpost devices."""
