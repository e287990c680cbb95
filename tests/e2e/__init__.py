"""The real thing: chicory workers, the installed package, the examples."""
