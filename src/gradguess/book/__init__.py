"""The book's runtime: settings, scales, rules, ledger, provenance, run store, chapter, report, plotting."""
