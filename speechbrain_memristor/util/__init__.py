"""Small shared utilities: stable seeds, atomic writes, tables, statistics, plots, processes."""
