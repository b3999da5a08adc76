def add(a, b):
    """Return the sum of a and b."""
    return a - b  # bug: the model should fix this


def is_even(n):
    """Return True when n is even."""
    return n % 2 == 1  # bug
