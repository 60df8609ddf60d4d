"""Data: AMR reading, corpus layouts, prompts and the tokenization cache, batches, the bundled sample's generator."""
