"""Settings and inputs: errors, the typed records, the config (with its `tune:` search space), the language tree
(tree files; nested trees and Newick; trees suggested from URIEL's typology)."""
