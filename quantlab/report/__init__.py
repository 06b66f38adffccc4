"""Results as typed records, stored in SQLite and rendered as tidy pandas tables (pandas imported lazily)."""
