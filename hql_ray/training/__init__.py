"""Training one node, no Ray: the base model, the hand-off, the node's recipe, its optimizer, loss and tracking."""
