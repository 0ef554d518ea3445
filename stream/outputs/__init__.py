"""Outputs that consume events: the event store (`store`: SQLite and snapshot files).
Each is a subscriber like any other: it never slows the recognizer."""
