"""The `ctfm` command: one thin argparse module per subcommand over the library (see ``main.COMMANDS``)."""
