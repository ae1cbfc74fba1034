"""The SQL store: tables, migrations and the unit of work (SQLite or PostgreSQL)."""
