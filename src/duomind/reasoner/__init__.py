"""The dual-system reasoner (Pangu Embedded Stage 2, arXiv 2505.22375): fast, slow and auto modes."""
