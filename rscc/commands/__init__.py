"""The commands of the `rscc` console script that caption or make models: each module's `make_parser(subparsers)`
adds its subcommand and `main(args)` runs it (see `rscc.cli`), calling the library code it wraps."""
