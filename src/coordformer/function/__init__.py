"""Protein function prediction: DeepFRI labels, metrics, embeddings and fine-tuning."""
