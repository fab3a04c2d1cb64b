"""The demo world: a tuned text teacher and an aligned speech student, built offline."""
