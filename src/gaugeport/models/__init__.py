"""Models: tiny test models built from transformers configs, and model loading."""
