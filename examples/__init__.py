"""Small CPU-heavy procq applications; `procq demo` runs stdlib_crunch."""
