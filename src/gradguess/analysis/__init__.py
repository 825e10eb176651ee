"""The analyses the chapters call: statistics, decisions and the paper's numbers."""
