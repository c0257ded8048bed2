"""How many dead letters one list may ask for: the audit service refuses more, the CLI's option stops there.
A list is read whole from the topic (values up to 16 MiB each), so never the whole topic at once."""

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
