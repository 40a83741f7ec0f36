"""Thin routes: parse, call the service, shape the answer. Errors are raised, never built here."""
