"""The published contract, tried from outside: schemathesis against a live gunicorn node."""
