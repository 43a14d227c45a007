"""Command-line tools of leapcore: thin layers that parse, call the library and print."""
