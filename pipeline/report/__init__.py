"""The report: results read back, sections, figures, Markdown/HTML; comparing experiments."""
