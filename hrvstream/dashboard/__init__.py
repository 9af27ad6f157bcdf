"""The therapist dashboard: web app, accounts and sessions, and the seam to the server."""
