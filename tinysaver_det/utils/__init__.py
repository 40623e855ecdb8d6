"""Small shared helpers: atomic writes, quiet third-party output."""
