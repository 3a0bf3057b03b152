"""commandpost supervisors."""
