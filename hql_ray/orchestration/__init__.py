"""Orchestration on Ray: the driver's walk, its run model shared with --dry-run, launches, warm workers, Tune, the keeper."""
