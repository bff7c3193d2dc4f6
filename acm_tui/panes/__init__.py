"""One pane per pipeline stage; each is a `Pane` (see base.py)."""
