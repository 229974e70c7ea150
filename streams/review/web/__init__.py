"""The web view of the review loop (FastAPI app, templates, static files)."""
