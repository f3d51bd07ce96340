"""Generation per method on diffusers schedulers; the shared CFG loop."""
