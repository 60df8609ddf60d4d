"""Ray Serve for finished runs: every language of a run behind one endpoint, one shared base per replica."""
