"""commandpost admin_web."""
