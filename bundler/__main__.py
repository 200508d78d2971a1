"""``python -m bundler``: the ``sealift`` command."""

from bundler.cli import main

main()
