"""The county data-exchange gateway: student status, poverty, disability and civil-affairs records."""

__version__ = "0.1.0"
