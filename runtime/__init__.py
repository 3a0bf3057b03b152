"""commandpost runtime."""
