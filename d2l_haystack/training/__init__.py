"""Meta-training and evaluation of D2L hypernetworks (uses the core only, never Haystack)."""
