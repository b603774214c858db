"""dustgate."""
