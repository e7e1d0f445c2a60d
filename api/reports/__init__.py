"""Image-build usage reports: the accounting cache, the figures and their output."""
