"""Put first on PYTHONPATH by `flowscope-agent`: its sitecustomize attaches the agent at start-up."""
