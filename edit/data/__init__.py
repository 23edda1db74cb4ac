"""Package data of steer.edit: the default corpus for key statistics (see SOURCES.md)."""
