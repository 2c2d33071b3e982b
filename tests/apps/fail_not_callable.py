"""Imports fine, but `application` is not callable and other names are missing."""

application = "FAIL-NOT-CALLABLE"
