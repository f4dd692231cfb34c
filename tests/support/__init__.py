"""Helpers shared by the tests: no test lives here."""
