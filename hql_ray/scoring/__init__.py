"""Scoring: metrics as the paper names them, and a node's generation and scoring on its test sets."""
