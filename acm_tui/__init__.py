"""acm-tui: the Textual app that drives every stage of acm from the keyboard."""
