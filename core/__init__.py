"""acm's logic: settings, data, tokenizer, model, training and generation. Never imports Textual."""

__version__ = "0.1.0"
