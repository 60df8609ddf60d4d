"""Settings and inputs: errors, the typed records, the config (with its `tune:` search space), the language tree."""
