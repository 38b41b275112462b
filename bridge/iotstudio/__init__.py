"""The Altair IoT Studio REST API: client, token cache, outbox, and a local stand-in for tests."""
