"""Scores, selection, surgery and reports: everything after the trace."""
