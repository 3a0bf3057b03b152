"""Bus priority at signalised crossroads."""
