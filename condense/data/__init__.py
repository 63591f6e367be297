"""Real, offline data: scikit-learn's bundled digits and text from the installed Python's standard library."""
