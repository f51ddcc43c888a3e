"""``python -m engine``: the llamanp command line."""
from .cli import main

main()
