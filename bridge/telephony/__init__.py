"""Provider modules: each parses and produces one provider's stream messages, nothing more."""
