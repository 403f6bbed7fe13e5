"""The `shipyard` command line: one module per command group; Rich is used only here."""
