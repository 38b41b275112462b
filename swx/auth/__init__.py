"""OAuth 2.0 helpers for the IoT Studio API (``swx.auth.token``)."""
