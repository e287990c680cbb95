"""The SQL backend's own behaviour: statements, migrations, adoption, LISTEN/NOTIFY."""
