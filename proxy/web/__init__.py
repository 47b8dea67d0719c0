"""The browser UI under /ui/ (DESIGN "Web UI")."""
