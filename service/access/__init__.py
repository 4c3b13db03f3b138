"""Who may call, and how often: API keys (``keys``) and rate limits (``rate_limit``)."""
